"""Running real processes for FLQ's tests and benchmarks; not part of the shipped ``flq`` package.

Tests and benchmarks start real Flower runs, SuperLinks and SuperNodes. This package is the one
place that knows how, so every caller starts and stops them the same way:

* ``harness.processes``: free ports, the environment Flower's commands run in, and ``Proc``, a
  subprocess in its own session that is waited for by a port or a log line and stopped by its own
  pid and process group (plus the processes Flower detached from it), never by name;
* ``harness.simulation``: ``LocalSimulation``, a simulation SuperLink of the caller's own and real
  ``flwr run`` against it, and ``SimulationRun``, the files a run wrote;
* ``harness.deployment``: a real deployment on loopback (``flq-superlink``, ``flq-supernode``s,
  ``flwr run``) with certificates of its own;
* ``harness.tiny_models``: tiny random models saved as Hugging Face folders.

It sits beside ``flq/`` and is not installed (``pyproject.toml`` packages ``flq*`` only): tests
import it through pytest's ``pythonpath``, benchmarks put the project root on ``sys.path``.
"""
