"""A deployed client's start-up each round, measured the way Flower pays it.

In a deployment Flower runs every message in a new ClientApp process: it imports the app (flwr,
torch, transformers, peft), and the train handler builds the model and the client's data before
training starts. None of that happens in a simulation, whose ClientApps stay warm. ``flq calibrate``
runs this module as such a process on the tier's cores (through ``flq.launch.limits``, as the
launcher starts a node) and times it from start to exit; the tier's ``startup_s`` adds what a round
waits on Flower's polling (``Measurement.startup_s``).

    python -m flq.launch.startup_probe RUN_CONFIG_JSON RANK THREADS
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

from ..sim.calibration import CalibrationError
from .limits import prefix


def time_probes(
    config: dict,
    rank: int,
    cores: Iterable[int] | None,
    threads: int,
    runs: int,
    progress: Callable[[str], None] = print,
) -> list[float]:
    """Seconds from start to exit of ``runs`` fresh probe processes on ``cores`` at ``threads``."""
    command = [*prefix(cores, None), sys.executable, "-m", __name__, json.dumps(config), str(rank), str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    seconds = []
    for i in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CalibrationError(f"start-up probe failed (exit {proc.returncode}): {last}")
        progress(f"  {threads}t start-up {i + 1}/{runs}: {seconds[-1]:.2f} s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    config_json, rank, threads = (sys.argv[1:] if argv is None else argv)[:3]
    from .. import client_app  # noqa: F401  what Flower's ClientApp process imports to load the app
    from ..config import RunConfig
    from ..task.lora import get_lora_model
    from ..task.partition import client_split
    from ..task.specs import backbone_spec, data_spec, lora_spec
    from ..task.train import make_batches, set_torch_threads

    cfg = RunConfig.from_flower(json.loads(config_json))
    set_torch_threads(int(threads))  # as the ClientApp sets its tier's threads
    model = get_lora_model(backbone_spec(cfg), lora_spec(cfg))
    model.use_rank(int(rank))
    split = client_split(data_spec(cfg), 0, 2)
    batches = make_batches(
        cfg.task, split.train, model.processor, cfg.batch_size, cfg.max_seq_length, cfg.seed, cfg.packing
    )
    next(iter(batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
