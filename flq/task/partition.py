"""Federated splits: a server held-out set, and one (train, test) split per client.

Everyone (the ServerApp and every ClientApp, in any process) derives the same splits from
the same source and seed, so no data ever has to travel. The pool is shuffled before
partitioning (flwr-datasets' IID partitioner takes contiguous shards, and sources are often
sorted by class). Partitioners are flwr-datasets' own: IID, Dirichlet(alpha) by label and
pathological (k classes per client). Text and images are split alike: only labels count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .chat_data import INSTRUCTION_TASK, ChatColumns, load_chat_data
from .data import DataError, TaskData, load_text_data
from .images import IMAGE_TASK, load_image_data

LABEL_PARTITIONERS = ("dirichlet", "pathological")


@dataclass(frozen=True)
class DataSpec:
    source: str
    task: str
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of CSV, JSONL and text files
    chat: ChatColumns = ChatColumns()  # instruction data: where rows keep their conversation
    server_test_size: int = 300
    local_test_fraction: float = 0.2
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.3
    classes_per_client: int = 2
    seed: int = 42


@dataclass
class ClientSplit:
    partition_id: int
    train: TaskData
    test: TaskData


def subset(data: TaskData, indices) -> TaskData:
    return data.take([int(i) for i in indices])


@lru_cache(maxsize=4)
def load_source(spec: DataSpec) -> TaskData:
    if spec.task == IMAGE_TASK:
        return load_image_data(spec.source)
    if spec.task == INSTRUCTION_TASK:
        return load_chat_data(spec.source, spec.chat, spec.label_column, spec.encoding)
    return load_text_data(spec.source, spec.task, spec.text_column, spec.label_column, spec.encoding)


def check_partitioning(spec: DataSpec) -> None:
    """What the partitioner needs of the data, checked once the data is loaded (the ServerApp does
    this at start, so a split that cannot work fails before any client starts); raises DataError."""
    data = load_source(spec)
    if spec.partitioner in LABEL_PARTITIONERS and data.labels is None:
        raise DataError(
            f'partitioner="{spec.partitioner}" splits by label and the data has none: set partitioner="iid"'
        )
    if spec.partitioner == "pathological" and spec.classes_per_client > data.num_labels:
        raise DataError(
            f"classes-per-client={spec.classes_per_client} but the data has {data.num_labels} classes "
            f'(partitioner="pathological"): set classes-per-client to at most {data.num_labels}'
        )
    server_and_pool_indices(spec)  # server-test-size against the data's size


@lru_cache(maxsize=4)
def server_and_pool_indices(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """(server test indices, client pool indices), stratified by label when there are labels."""
    data = load_source(spec)
    n = len(data)
    if spec.server_test_size >= n:
        raise DataError(
            f"server-test-size={spec.server_test_size} leaves nothing for clients ({n} examples): "
            f"set server-test-size below {n}"
        )
    rng = np.random.default_rng(spec.seed)
    if data.labels is None:
        order = rng.permutation(n)
        return np.sort(order[: spec.server_test_size]), order[spec.server_test_size :]
    labels = np.asarray(data.labels)
    test: list[int] = []
    for label in range(data.num_labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        share = int(round(spec.server_test_size * len(members) / n))
        test.extend(members[:share].tolist())
    test_set = set(test)
    pool = np.array([i for i in rng.permutation(n) if i not in test_set])
    return np.sort(np.array(test)), pool


def server_test_data(spec: DataSpec) -> TaskData:
    test_idx, _ = server_and_pool_indices(spec)
    return subset(load_source(spec), test_idx)


@lru_cache(maxsize=8)
def _partition_indices(spec: DataSpec, num_partitions: int) -> tuple[tuple[int, ...], ...]:
    """Pool indices of every partition, by flwr-datasets' partitioner."""
    from datasets import Dataset

    data = load_source(spec)
    _, pool = server_and_pool_indices(spec)
    if spec.partitioner in LABEL_PARTITIONERS and data.labels is None:
        raise DataError(f"partitioner {spec.partitioner!r} splits by label; the data has none (use iid)")
    if num_partitions > len(pool):
        raise DataError(f"{num_partitions} clients but only {len(pool)} training examples")
    columns = {"idx": pool.tolist()}
    if data.labels is not None:
        columns["label"] = [data.labels[i] for i in pool]
    partitioner = _make_partitioner(spec, num_partitions, data.num_labels)
    partitioner.dataset = Dataset.from_dict(columns)
    try:
        parts = [tuple(partitioner.load_partition(p)["idx"]) for p in range(num_partitions)]
    except ValueError as exc:  # e.g. Dirichlet cannot reach its minimum partition size
        raise DataError(
            f"cannot split {len(pool)} examples into {num_partitions} {spec.partitioner} partitions: {exc}"
        ) from exc
    return tuple(parts)


def _make_partitioner(spec: DataSpec, num_partitions: int, num_labels: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if spec.partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if spec.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=spec.dirichlet_alpha,
            min_partition_size=4,  # a train and a test example at the very least
            self_balancing=False,
            seed=spec.seed,
        )
    if spec.partitioner == "pathological":
        if spec.classes_per_client > num_labels:
            raise DataError(f"classes-per-client={spec.classes_per_client} > {num_labels} classes")
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=spec.seed,
        )
    raise DataError(f"unknown partitioner {spec.partitioner!r}")


def client_split(spec: DataSpec, partition_id: int, num_partitions: int) -> ClientSplit:
    """The (train, local test) split of one client."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} outside [0, {num_partitions})")
    parts = _partition_indices(spec, num_partitions)
    indices = np.array(parts[partition_id], dtype=np.int64)
    if len(indices) < 2:
        raise DataError(
            f"client partition {partition_id} has {len(indices)} example(s): too few to train and test; "
            "use fewer clients, a larger dirichlet-alpha or another partitioner"
        )
    rng = np.random.default_rng(spec.seed + 1 + partition_id)
    indices = rng.permutation(indices)
    n_test = min(max(1, int(round(len(indices) * spec.local_test_fraction))), len(indices) - 1)
    data = load_source(spec)
    return ClientSplit(partition_id, subset(data, indices[n_test:]), subset(data, indices[:n_test]))


def partition_sizes(spec: DataSpec, num_partitions: int) -> list[int]:
    return [len(p) for p in _partition_indices(spec, num_partitions)]


def partition_label_histograms(spec: DataSpec, num_partitions: int) -> list[list[int]]:
    """Every partition's label counts (train and local test together), by partition id."""
    data = load_source(spec)
    if data.labels is None:
        raise DataError("the data has no labels")
    return [label_histogram(subset(data, part)) for part in _partition_indices(spec, num_partitions)]


def label_histogram(data: TaskData) -> list[int]:
    if data.labels is None:
        return []
    return np.bincount(np.asarray(data.labels), minlength=data.num_labels).tolist()
