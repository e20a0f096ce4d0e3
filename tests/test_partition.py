"""Federated splits: deterministic, disjoint, complete, and as non-IID as configured."""

from collections import Counter

import numpy as np
import pytest

from flq.task.data import DataError
from flq.task.partition import (
    DataSpec,
    _partition_indices,
    check_partitioning,
    client_split,
    label_histogram,
    load_source,
    partition_label_histograms,
    partition_sizes,
    server_and_pool_indices,
    server_test_data,
    subset,
)

BBC = DataSpec("bbc-news", "sequence-classification", server_test_size=200, seed=7)


def all_client_indices(spec, n):
    return [set(p) for p in _partition_indices(spec, n)]


def test_server_test_is_stratified_and_disjoint_from_the_pool():
    test_idx, pool = server_and_pool_indices(BBC)
    assert len(test_idx) == pytest.approx(200, abs=3)
    assert not set(test_idx) & set(pool)
    assert len(test_idx) + len(pool) == 2225
    hist = label_histogram(server_test_data(BBC))
    assert min(hist) >= 30  # every class is represented


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_deterministic(partitioner):
    spec = DataSpec("bbc-news", "sequence-classification", server_test_size=200, partitioner=partitioner, seed=3)
    parts = all_client_indices(spec, 5)
    union = set().union(*parts)
    assert sum(len(p) for p in parts) == len(union)  # disjoint
    _, pool = server_and_pool_indices(spec)
    assert union <= set(pool.tolist())
    a = client_split(spec, 2, 5)
    b = client_split(spec, 2, 5)
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    # The client's train and test split its partition: disjoint and complete. Compared as
    # multisets, since BBC News repeats some articles: a text may be in both halves when the
    # source holds it twice, never more often than the partition holds it.
    partition = subset(load_source(spec), _partition_indices(spec, 5)[2]).texts
    assert Counter(a.train.texts) + Counter(a.test.texts) == Counter(partition)


def test_iid_partitions_are_balanced_despite_sorted_sources():
    spec = DataSpec("bbc-news", "sequence-classification", server_test_size=200, partitioner="iid")
    for pid in range(4):
        hist = np.array(label_histogram(client_split(spec, pid, 4).train))
        assert hist.min() > 0.5 * hist.mean()


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    def mean_max_share(alpha):
        spec = DataSpec("bbc-news", "sequence-classification", server_test_size=200, dirichlet_alpha=alpha)
        shares = []
        for pid in range(6):
            hist = np.array(label_histogram(client_split(spec, pid, 6).train))
            shares.append(hist.max() / hist.sum())
        return float(np.mean(shares))

    assert mean_max_share(0.1) > mean_max_share(100.0) + 0.2


def test_pathological_gives_k_classes_per_client():
    spec = DataSpec(
        "bbc-news", "sequence-classification", server_test_size=200, partitioner="pathological", classes_per_client=2
    )
    for pid in range(5):
        split = client_split(spec, pid, 5)
        assert sum(1 for c in label_histogram(split.train) if c > 0) <= 2


def test_local_test_fraction():
    spec = DataSpec("bbc-news", "sequence-classification", server_test_size=200, local_test_fraction=0.25)
    split = client_split(spec, 0, 4)
    total = len(split.train.texts) + len(split.test.texts)
    assert len(split.test.texts) == round(total * 0.25)
    assert sum(partition_sizes(spec, 4)) == 2225 - len(server_and_pool_indices(spec)[0])


def test_partition_label_histograms_are_each_clients_train_and_test_labels():
    spec = DataSpec("bbc-news", "sequence-classification", server_test_size=200, dirichlet_alpha=0.3, seed=3)
    hists = partition_label_histograms(spec, 5)
    assert [sum(h) for h in hists] == partition_sizes(spec, 5)
    for pid in range(5):
        split = client_split(spec, pid, 5)
        both = np.add(label_histogram(split.train), label_histogram(split.test))
        assert hists[pid] == both.tolist()


def test_errors_are_clear():
    with pytest.raises(DataError, match="outside"):
        client_split(BBC, 5, 5)
    with pytest.raises(DataError, match="clients but only"):
        client_split(DataSpec("bbc-news", "sequence-classification", server_test_size=2200), 0, 100)
    with pytest.raises(DataError, match="leaves nothing"):
        server_test_data(DataSpec("bbc-news", "sequence-classification", server_test_size=5000))


def test_label_partitioners_need_labels(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(50)))
    spec = DataSpec(str(path), "causal-lm", server_test_size=10, partitioner="dirichlet")
    with pytest.raises(DataError, match="splits by label"):
        client_split(spec, 0, 2)


def test_what_the_partitioner_needs_of_the_data_is_checked_before_any_client(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(50)))
    with pytest.raises(DataError, match='partitioner="dirichlet" splits by label.*set partitioner="iid"'):
        check_partitioning(DataSpec(str(path), "causal-lm", server_test_size=10, partitioner="dirichlet"))
    check_partitioning(DataSpec(str(path), "causal-lm", server_test_size=10, partitioner="iid"))
    spec = DataSpec("bbc-news", "sequence-classification", partitioner="pathological", classes_per_client=6)
    with pytest.raises(DataError, match="classes-per-client=6 but the data has 5 classes.*at most 5"):
        check_partitioning(spec)
    check_partitioning(DataSpec("bbc-news", "sequence-classification", partitioner="pathological"))
    with pytest.raises(DataError, match="server-test-size=5000 leaves nothing.*below 2225"):
        check_partitioning(DataSpec("bbc-news", "sequence-classification", server_test_size=5000))


def test_tiny_partitions_are_refused(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(12)))
    spec = DataSpec(str(path), "causal-lm", server_test_size=2, partitioner="iid")
    with pytest.raises(DataError, match="too few to train and test"):
        client_split(spec, 0, 10)
