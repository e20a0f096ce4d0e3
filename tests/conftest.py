"""Shared fixtures: tiny random models on disk, and real ``flwr run`` simulations.

The simulation harness (``flq.simulate.LocalSimulation``) starts Flower's SuperLink in
simulation mode itself, on a free port, with ``FLWR_HOME`` in a temp dir, so every test owns
the process it started and stops it by its own pid.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flq.simulate import PROJECT_DIR as PROJECT
from flq.simulate import LocalSimulation


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from flq.testing import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from flq.testing import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def flower_sim(tmp_path_factory):
    sim = LocalSimulation(tmp_path_factory.mktemp("flwr-sim"))
    try:
        yield sim
    finally:
        sim.close()
