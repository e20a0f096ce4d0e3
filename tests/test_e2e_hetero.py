"""End to end: mixed LoRA ranks and mixed backbone bits in one real ``flwr run`` federation."""

import pytest

from tests.test_e2e_simulation import TINY

pytestmark = pytest.mark.e2e  # a real `flwr run` simulation (SuperLink, SuperNodes, ClientApp processes)


@pytest.fixture(scope="module")
def hetero_run(flower_sim, tiny_llama_dir, keyword_csv):
    overrides = {
        **TINY,
        "model": str(tiny_llama_dir),
        "data": str(keyword_csv),
        "num-server-rounds": 3,
        "lora-rank": 8,
        "clients-per-round": 6,
        "scheduler": "table",
        "client-ranks": "cycle:2,4,8",
        "client-bits": "groups:4,8,16",
        "aggregation": "rank-wise",
        "update-codec": "int8",
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.5,
    }
    return flower_sim.run(overrides, num_supernodes=6, name="hetero")


def test_every_client_trains_at_its_own_rank_and_bits(hetero_run):
    rounds = hetero_run.rounds()
    assert len(rounds) == 3
    for r in rounds:
        by_partition = {c["partition_id"]: c for c in r["clients"]}
        assert sorted(by_partition) == list(range(6))
        assert [by_partition[p]["rank"] for p in range(6)] == [2, 4, 8, 2, 4, 8]
        assert [by_partition[p]["bits"] for p in range(6)] == [4, 4, 8, 8, 16, 16]
        assert all(c["status"] == "ok" for c in r["clients"]) and r["rejected"] == []
        # Bytes scale with rank: a rank-8 client sends more than a rank-2 one.
        assert by_partition[2]["bytes_up"] > by_partition[0]["bytes_up"]


def test_the_mixed_federation_improves_the_global_model(hetero_run):
    summary = hetero_run.summary()
    final = hetero_run.rounds()[-1]
    assert final["eval_loss"] < summary["initial"]["eval_loss"]
    assert final["score"] > summary["initial"]["score"] + 0.2
