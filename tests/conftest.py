"""Shared fixtures: tiny random models on disk, and real ``flwr run`` simulations.

The simulation harness (``harness.simulation.LocalSimulation``) starts Flower's SuperLink in
simulation mode itself, on a free port, with ``FLWR_HOME`` in a temp dir, so every test owns
the process it started and stops it by its own pid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.simulation import LocalSimulation


def pytest_configure(config) -> None:
    # The tests' models are tiny: torch's intra-op threads buy nothing, and on a 2-core machine
    # shared with other work two OpenMP threads made the unit suite many times slower. Only this
    # process: the runs and nodes the tests start keep their own settings.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from harness.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def chat_llama_dir(tmp_path_factory) -> Path:
    from harness.tiny_models import make_chat_llama

    return make_chat_llama(tmp_path_factory.mktemp("chat-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from harness.tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def flower_sim(tmp_path_factory):
    sim = LocalSimulation(tmp_path_factory.mktemp("flwr-sim"))
    try:
        yield sim
    finally:
        sim.close()


@pytest.fixture(scope="session")
def keyword_csv(tmp_path_factory) -> Path:
    """A 3-class CSV whose label is a keyword hidden among filler words: tiny models learn it fast."""
    import csv
    import random

    rng = random.Random(0)
    filler = "the a of news report said today market team game city plan year people".split()
    keywords = ["economy", "football", "election"]
    path = tmp_path_factory.mktemp("keyword-data") / "keywords.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(600):
            label = i % 3
            words = rng.choices(filler, k=12)
            words.insert(rng.randrange(len(words)), keywords[label])
            writer.writerow([" ".join(words), keywords[label]])
    return path
