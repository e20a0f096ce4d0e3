"""`flq launch EXPERIMENT.toml`: the experiment file, the process limits, the renderings, and real launches.

Fast tests check the file's errors (each names its key), the limits wrapper, stopping a process
tree by pid, and the Slurm and Compose renderings (bash -n, shellcheck, Compose's own parser and
the compose-spec schema where installed, and a dry run of the Slurm scripts with stub commands
whose argv the real flq-superlink / flq-supernode parsers check). The `e2e` ones launch real
deployments on loopback with a tiny model: a completed run, a failed run, Ctrl-C, and per-tier
network namespaces (root only). Timeouts are hang guards only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from flq.launch import cli as launch_cli
from flq.launch.app_run import add_arguments as app_run_arguments
from flq.launch.experiment import ExperimentError, load_experiment
from flq.launch.limits import allot_cpus, format_cpus, parse_cpus
from flq.launch.processes import Child, is_running
from flq.launch.progress import RoundWatcher, format_round
from flq.launch.render_compose import render_compose
from flq.launch.render_slurm import render_slurm
from flq.netem.star import unavailable_reason
from harness.simulation import PROJECT_DIR

BIN = Path(sys.executable).parent
EXAMPLE = PROJECT_DIR / "experiments" / "tiered-local.toml"
GUARD = 600.0  # hang guard for one launch (each ClientApp process imports torch: ~10-15 CPU s here)
# A one-thread CPU tier: on a 2-core host its core limit (one core) is visible, unlike cpu-edge's two.
TIER_FILE = """
[tiers.cpu-1t]
description = "one thread of this machine: the tests' CPU tier"
compute_factor = 4.0
threads = 1
memory_limit_mb = 8192
uplink_mbps = 5.0
downlink_mbps = 25.0
rtt_ms = 60.0
loss = 0.01
"""


def experiment(tmp: Path, body: str = "", run: str = "", name: str = "t", groups: str | None = None) -> Path:
    """An experiment file in ``tmp`` for the project's app; ``groups`` replaces the default two nodes."""
    (tmp / "tiers.toml").write_text(TIER_FILE)
    groups = groups if groups is not None else '[[supernodes]]\ntier = "gpu-24g"\n\n[[supernodes]]\ntier = "cpu-1t"\n'
    text = (
        f'[experiment]\nname = "{name}"\napp = "{PROJECT_DIR}"\nresults = "results"\n'
        f"timeout-s = {GUARD}\nnodes-timeout-s = 180\n{body}\n"
        f'[run]\ntier-file = "tiers.toml"\n{run}\n{groups}'
    )
    path = tmp / "experiment.toml"
    path.write_text(text)
    return path


# -- the experiment file ----------------------------------------------------------------------


def test_the_example_experiment_describes_three_tiers_of_six_nodes():
    exp = load_experiment(EXAMPLE)
    nodes = exp.nodes()
    assert [n.group.tier.name for n in nodes] == ["gpu-24g"] * 2 + ["cpu-edge"] * 2 + ["jetson-nano"] * 2
    assert [n.partition_id for n in nodes] == list(range(6)) and {n.num_partitions for n in nodes} == {6}
    assert nodes[2].node_config == 'partition-id=2 num-partitions=6 tier="cpu-edge"'
    assert [(n.group.cpus, n.group.gpus, n.group.memory_mb) for n in nodes[::2]] == [
        (None, 1, None),  # a GPU tier: no core limit, a GPU on clusters
        (2, 0, 8192),  # cpu-edge: its 2 threads' cores, its memory_limit_mb ("tier")
        (1, 0, None),  # jetson-nano: cpus = 1 given
    ]
    assert exp.run_config["clients-per-round"] == 6  # defaulted to the nodes started
    assert exp.app == PROJECT_DIR and exp.results == PROJECT_DIR / "runs" / "launch"
    assert exp.run_config_for("/x") == {**exp.run_config, "output-dir": "/x", "run-name": "tiered-local"}


def test_nodes_of_a_group_share_its_link_unless_each_gets_its_own(tmp_path):
    groups = '[[supernodes]]\ntier = "gpu-24g"\ncount = 2\n\n[[supernodes]]\ntier = "cpu-1t"\ncount = 3\n'
    shared = load_experiment(experiment(tmp_path, groups=groups))
    assert shared.network.link == "group" and [n.link_index for n in shared.nodes()] == [0, 0, 1, 1, 1]
    assert [g.tier.name for g in shared.links()] == ["gpu-24g", "cpu-1t"]
    own = load_experiment(experiment(tmp_path, body='[network]\nlink = "node"\n', groups=groups))
    assert [n.link_index for n in own.nodes()] == [0, 1, 2, 3, 4]
    assert [g.tier.name for g in own.links()] == ["gpu-24g"] * 2 + ["cpu-1t"] * 3


BAD = [
    ("[oops]\n", "oops: unknown table"),
    ('[experiment]\napp = "."\n', "experiment.name: required"),
    ('[experiment]\nname = "a b"\n', "experiment.name: letters"),
    ('[experiment]\nname = "x"\ntimeout = 3\n', "experiment.timeout: unknown key"),
    ('[experiment]\nname = "x"\ntimeout-s = -1\n', "experiment.timeout-s: must be > 0"),
    ('[experiment]\nname = "x"\napp = "/nonexistent"\n', "experiment.app: /nonexistent has no pyproject.toml"),
    ('[experiment]\nname = "x"\n[superlink]\nport = 70000\n', "superlink.port: must be a port number"),
    ('[experiment]\nname = "x"\n[run]\nno-such-key = 1\n', "run.no-such-key: not a run-config key"),
    ('[experiment]\nname = "x"\n[run]\noutput-dir = "/tmp"\n', "run.output-dir: set by flq launch"),
    ('[experiment]\nname = "x"\n[run]\nlora-rank = "8"\n', "run.lora-rank: must be int"),
    ('[experiment]\nname = "x"\n[run]\ntier-file = "missing.toml"\n', "run.tier-file:"),
    ('[experiment]\nname = "x"\n', "supernodes: at least one"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ncount = 2\n', "supernodes[0].tier: required"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ntier = "tpu"\n', "supernodes[0].tier: unknown tier 'tpu'"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ntier = "gpu-24g"\ncount = 0\n', "supernodes[0].count: must be"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ntier = "cpu-edge"\ncpus = true\n', "supernodes[0].cpus: must be"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ntier = "cpu-edge"\nmemory-mb = "lots"\n', "supernodes[0].memory-mb"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ntier = "gpu-24g"\nthreads = 2\n', "supernodes[0].threads: unknown"),
    ('[experiment]\nname = "x"\n[[supernodes]]\ntier = "gpu-24g"\nmemory-mb = "tier"\n', "CPU tier's memory_limit"),
    (
        '[experiment]\nname = "x"\n[run]\nclients-per-round = 3\n[[supernodes]]\ntier = "gpu-24g"\ncount = 2\n',
        "run.clients-per-round: 3 exceeds the 2 SuperNodes",
    ),
    ('[experiment]\nname = "x"\n[network]\nqueue-ms = 0\n[[supernodes]]\ntier = "gpu-24g"\n', "network.queue-ms"),
    ('[experiment]\nname = "x"\n[network]\nlink = "site"\n[[supernodes]]\ntier = "gpu-24g"\n', "network.link: must be"),
    ('[experiment]\nname = "x"\n[slurm]\ntime = "an hour"\n[[supernodes]]\ntier = "gpu-24g"\n', "slurm.time"),
    ('[experiment]\nname = "x"\n[slurm]\nsbatch-args = ["-q x"]\n[[supernodes]]\ntier = "gpu-24g"\n', "slurm.sbatch"),
    ('[experiment]\nname = "x"\n[compose]\nbuild = "yes"\n[[supernodes]]\ntier = "gpu-24g"\n', "compose.build"),
    ("[experiment\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_experiment_file_is_refused_with_the_key_named(tmp_path, text, message):
    if "app =" not in text:  # the project's app, unless the case is about the app
        text = text.replace('name = "x"\n', f'name = "x"\napp = "{PROJECT_DIR}"\n', 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_the_cli_refuses_a_bad_file_before_starting_anything(tmp_path):
    path = experiment(tmp_path, run="lora-rank = 4.5")
    proc = subprocess.run([str(BIN / "flq"), "launch", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "run.lora-rank: must be int" in proc.stdout
    assert not (tmp_path / "results").exists()
    check = subprocess.run(
        [str(BIN / "flq"), "launch", str(path.with_name("none.toml")), "--check"], capture_output=True
    )
    assert check.returncode == 2


def test_emulated_links_without_root_are_refused_with_the_reason(tmp_path, monkeypatch, capsys):
    import flq.netem.star

    monkeypatch.setattr(flq.netem.star, "unavailable_reason", lambda: "per-tier network emulation needs root")
    path = experiment(tmp_path, body="[network]\nemulate = true\n")
    assert launch_cli.run(launch_cli_args(path)) == 2
    assert "needs root; run as root or pass --no-network" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


def launch_cli_args(path: Path, **kw):
    parser = argparse.ArgumentParser()
    launch_cli.add_arguments(parser)
    return parser.parse_args([str(path), *[f"--{k}={v}" for k, v in kw.items()]])


# -- limits, processes, progress ----------------------------------------------------------------


def test_cpu_lists_round_trip_and_nodes_get_their_own_cores_while_there_are_enough():
    assert parse_cpus("0,2-4,7") == {0, 2, 3, 4, 7} and format_cpus({0, 2, 3, 4, 7}) == "0,2-4,7"
    with pytest.raises(ValueError):
        parse_cpus("0-")
    assert allot_cpus([2, None, 1, 1], range(4)) == [{0, 1}, None, {2}, {3}]
    shared = allot_cpus([1, 1, 1], [0, 1])  # more nodes than cores: they share, each on one core
    assert shared == [{0}, {1}, {0}]
    assert allot_cpus([8], [0, 1]) == [{0, 1}]  # never more cores than the host has


def test_the_limits_wrapper_sets_affinity_and_address_space_then_becomes_the_command():
    cpu = min(os.sched_getaffinity(0))
    probe = (
        "import os, resource; print(os.getpid(), *os.sched_getaffinity(0), resource.getrlimit(resource.RLIMIT_AS)[0])"
    )
    cmd = [sys.executable, "-m", "flq.launch.limits", "--cpus", str(cpu), "--memory-mb", "3072", "--"]
    proc = subprocess.Popen([*cmd, sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True, cwd=PROJECT_DIR)
    out, _ = proc.communicate(timeout=60)
    pid, *cpus, limit = map(int, out.split())
    assert pid == proc.pid  # exec'd in place: stopping the launched pid stops the command
    assert cpus == [cpu] and limit == 3072 << 20


def test_stopping_a_child_stops_the_processes_it_detached(tmp_path):
    # A parent that starts a grandchild in a new session (as Flower starts its app processes).
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        "print(p.pid, flush=True)\ntime.sleep(300)\n"
    )
    child = Child("parent", [sys.executable, "-c", script], dict(os.environ), tmp_path / "parent.log")
    child.wait_for(lambda: child.text().strip(), 30, "the grandchild's pid")
    grandchild = int(child.text().split()[0])
    child.refresh()
    assert grandchild in child.pids()
    child.stop(grace=5)
    assert not child.alive() and child.leftovers() == []
    assert not is_running(grandchild)


def test_the_round_watcher_reads_complete_lines_only(tmp_path):
    path = tmp_path / "rounds.jsonl"
    watcher = RoundWatcher(path)
    assert watcher.poll() == []  # no file yet
    record = {"server_round": 1, "score_name": "accuracy", "score": 0.5, "num_accepted": 2, "num_sampled": 3}
    path.write_text(json.dumps(record) + "\n" + '{"server_round": 2')
    assert watcher.poll() == [record]
    with open(path, "a") as fh:
        fh.write(', "score": null}\n')
    assert [r["server_round"] for r in watcher.poll()] == [2] and watcher.poll() == []
    assert format_round({**record, "round_s": 12.34, "clock": "real"}) == (
        "round 1: accuracy 0.5000, 2/3 clients, 12.3 s on the real clock"
    )


# -- Slurm ---------------------------------------------------------------------------------------


def flower_parse(program: str, argv: list[str]):
    """``argv`` through flq-superlink's / flq-supernode's own parser (Flower's flags plus --quic-*)."""
    from flq.transport import cli

    if program == "flq-superlink":
        return cli._parse(cli._parse_args_run_superlink(), cli._add_superlink_args, program, argv)[0]
    return cli._parse(cli._parse_args_run_supernode(), cli._add_supernode_args, program, argv)[0]


def test_slurm_scripts_pass_bash_n_and_shellcheck_and_submit_in_dependency_order(tmp_path):
    exp = load_experiment(EXAMPLE)
    out = tmp_path / "slurm"
    render_slurm(exp, out)
    scripts = sorted(out.glob("*.sbatch")) + [out / "submit.sh"]
    assert [p.name for p in scripts] == [
        "superlink.sbatch",
        "supernodes-0-gpu-24g.sbatch",
        "supernodes-1-cpu-edge.sbatch",
        "supernodes-2-jetson-nano.sbatch",
        "submit.sh",
    ]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        lint = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
    # Each tier's resources, as #SBATCH lines.
    header = {p.name: re.findall(r"^#SBATCH (\S+)", p.read_text(), re.M) for p in scripts[:-1]}
    assert "--cpus-per-task=2" in header["supernodes-1-cpu-edge.sbatch"]
    assert "--mem=8192M" in header["supernodes-1-cpu-edge.sbatch"]
    assert "--cpus-per-task=1" in header["supernodes-2-jetson-nano.sbatch"]
    assert "--gres=gpu:1" in header["supernodes-0-gpu-24g.sbatch"]
    assert not any(h.startswith("--cpus-per-task") for h in header["supernodes-0-gpu-24g.sbatch"])
    assert {h for p, hs in header.items() for h in hs if h.startswith("--array")} == {"--array=0-1"}

    # submit.sh with a stand-in sbatch: the SuperLink job first, every array after it has started.
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "sbatch").write_text(
        '#!/bin/bash\nn=$(( $(wc -l < "$SBATCH_LOG" 2>/dev/null || echo 0) + 100 ))\n'
        'echo "$n $*" >> "$SBATCH_LOG"\necho "$n;cluster"\n'
    )
    (stubs / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    subprocess.run(["bash", str(out / "submit.sh")], check=True, env=env, capture_output=True, timeout=60)
    calls = log.read_text().splitlines()
    assert calls[0] == "100 --parsable superlink.sbatch"
    assert calls[1:] == [
        f"{101 + i} --parsable --dependency=after:100 supernodes-{i}-{tier}.sbatch"
        for i, tier in enumerate(["gpu-24g", "cpu-edge", "jetson-nano"])
    ]


def test_slurm_scripts_dry_run_with_stub_commands_whose_argv_the_real_parsers_accept(tmp_path):
    """Run the SuperLink job, then each node job, with flq-superlink, flq-supernode and the app run
    replaced by stubs that record their argv (certificates are made for real), as Slurm would run
    them on one host."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    record = 'printf "%s\\0" "$@" > "$STUB_OUT/$(basename "$0")${SLURM_ARRAY_TASK_ID:+-$SLURM_ARRAY_TASK_ID}"'
    stub = {
        "flq-superlink": f"{record}\necho 'Fleet QUIC API on 0.0.0.0:9093'\nexec sleep 300\n",
        "flq-supernode": f"{record}\nexec sleep 300\n",
        # python: the app run is recorded; anything else (the certificates) runs for real.
        "python": f'if [ "$2" = flq.launch.app_run ]; then {record}; exit 0; fi\nexec {sys.executable} "$@"\n',
    }
    for name, body in stub.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}")
        (stubs / name).chmod(0o755)
    path = experiment(tmp_path, body=f"[slurm]\nsetup = ['export PATH=\"{stubs}:$PATH\"']\nport = 9400\n")
    exp = load_experiment(path)
    out = tmp_path / "slurm"
    render_slurm(exp, out)
    recorded = tmp_path / "argv"
    env = {**os.environ, "STUB_OUT": str(recorded / "superlink")}
    for i in range(len(exp.groups) + 1):
        (recorded / ("superlink" if i == len(exp.groups) else f"group{i}")).mkdir(parents=True)
    subprocess.run(["bash", str(out / "superlink.sbatch")], check=True, env=env, timeout=120, capture_output=True)
    assert (out / "done").exists()  # it ended, and told the node jobs so
    (out / "done").unlink()  # as if the run were still going while the node jobs start
    for i, group in enumerate(exp.groups):  # array task 0 of each group: partition offset + 0
        node_env = {**env, "STUB_OUT": str(recorded / f"group{i}"), "SLURM_ARRAY_TASK_ID": "0"}
        script = out / f"supernodes-{i}-{group.tier.name}.sbatch"
        job = subprocess.Popen(["bash", str(script)], env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (recorded / f"group{i}" / "flq-supernode-0").exists():
            assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()
            time.sleep(0.2)
        (out / "done").touch()  # the SuperLink job's end: the node job stops its node and exits
        assert job.wait(30) == 0
        (out / "done").unlink()

    def argv(name: str) -> list[str]:
        return (recorded / name).read_bytes().decode().split("\0")[:-1]

    superlink = flower_parse("flq-superlink", argv("superlink/flq-superlink"))
    assert superlink.port == 9400 and superlink.host == "0.0.0.0"
    assert Path(superlink.ssl_certfile).is_file() and Path(superlink.ssl_ca_certfile).is_file()
    address = (out / "superlink.address").read_text().strip()
    assert address.endswith(":9400")
    for i, tier in enumerate(["gpu-24g", "cpu-1t"]):
        node = flower_parse("flq-supernode", argv(f"group{i}/flq-supernode-0"))
        assert node.superlink == address and Path(node.root_certificates).is_file()
        assert node.node_config == f'partition-id={i} num-partitions=2 tier="{tier}"'
    parser = argparse.ArgumentParser()
    app_run_arguments(parser)
    app_run = parser.parse_args(argv("superlink/python")[2:])
    assert app_run.nodes == 2 and Path(app_run.app) == PROJECT_DIR
    run_config = Path(app_run.run_config).read_text()
    assert f'output-dir = "{out}"' in run_config and 'run-name = "t"' in run_config
    assert app_run.rounds_file == f"{out}/t/rounds.jsonl"


# -- Docker Compose ------------------------------------------------------------------------------


def test_the_compose_file_is_valid_compose_with_a_service_per_node_and_their_limits(tmp_path):
    exp = load_experiment(EXAMPLE)
    out = tmp_path / "compose"
    render_compose(exp, out)
    compose = out / "compose.yaml"
    services = yaml.safe_load(compose.read_text())["services"]
    nodes = [n.name for n in exp.nodes()]
    assert list(services) == ["superlink", *nodes, "run"]
    assert (
        services["supernode-02-cpu-edge"]["cpus"] == 2.0 and services["supernode-02-cpu-edge"]["mem_limit"] == "8192m"
    )
    assert services["supernode-04-jetson-nano"]["cpus"] == 1.0
    gpu = services["supernode-00-gpu-24g"]
    assert "cpus" not in gpu
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert set(services["run"]["depends_on"]) == {"superlink", *nodes}
    for name in nodes:
        assert services[name]["depends_on"] == {"superlink": {"condition": "service_healthy"}}
        node = flower_parse("flq-supernode", services[name]["command"][1:])
        assert node.superlink == "superlink:9093" and node.node_config == next(
            n.node_config for n in exp.nodes() if n.name == name
        )
    flower_parse("flq-superlink", services["superlink"]["command"][1:])
    # Certificates for the name the nodes dial, and flwr's connection to it.
    assert (out / "certs" / "ca.crt").is_file()
    assert 'address = "superlink:9093"' in (out / "results" / "flwr-home" / "config.toml").read_text()
    assert "FROM python:3.11" in (out / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Compose's parser) not installed")
def test_compose_itself_accepts_the_rendered_file(tmp_path):
    out = tmp_path / "compose"
    render_compose(load_experiment(EXAMPLE), out)
    proc = subprocess.run(["docker-compose", "config", "-q"], cwd=out, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(
    shutil.which("check-jsonschema", path=f"{BIN}:{os.environ.get('PATH', '')}") is None,
    reason="check-jsonschema (with the compose-spec schema) not installed",
)
def test_the_rendered_file_matches_the_compose_spec_schema(tmp_path):
    out = tmp_path / "compose"
    render_compose(load_experiment(EXAMPLE), out)
    program = shutil.which("check-jsonschema", path=f"{BIN}:{os.environ.get('PATH', '')}")
    cmd = [program, "--builtin-schema", "vendor.compose-spec", str(out / "compose.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- real launches (e2e) --------------------------------------------------------------------------

TINY_RUN = textwrap.dedent(
    """
    max-seq-length = 32
    server-test-size = 50
    local-steps = 2
    batch-size = 8
    lora-rank = 4
    """
)


def tiny_run(model: Path, rounds: int, extra: str = "") -> str:
    return f'model = "{model}"\nnum-server-rounds = {rounds}\n{TINY_RUN}{extra}'


def launch(path: Path, folder: Path) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "flq"), "launch", str(path), "--results", str(folder)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=GUARD)


def assert_nothing_left(folder: Path) -> dict:
    info = json.loads((folder / "launch.json").read_text())
    assert info["leftover_pids"] == {}
    seen = [(pid, started) for p in info["processes"] for pid, started in p["pids_seen"]]
    assert seen and not [pid for pid, started in seen if is_running(pid, started)]
    return info


@pytest.mark.e2e
def test_a_launch_runs_every_tier_within_its_limits_gathers_everything_and_stops_it_all(tmp_path, tiny_llama_dir):
    path = experiment(
        tmp_path,
        run=tiny_run(tiny_llama_dir, 2),
        groups=('[[supernodes]]\ntier = "gpu-24g"\n\n[[supernodes]]\ntier = "cpu-1t"\nmemory-mb = "tier"\n'),
    )
    folder = tmp_path / "launch"
    proc = launch(path, folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for line in ("superlink up", "supernode-00-gpu-24g up", "supernode-01-cpu-1t up (pid", "round 1:", "round 2:"):
        assert line in out, out
    assert "finished:completed" in out
    # One folder: every process's log, the run directory, what ran where.
    logs = {p.name for p in (folder / "logs").iterdir()}
    assert logs == {"superlink.log", "supernode-00-gpu-24g.log", "supernode-01-cpu-1t.log", "app-run.log"}
    for name in ("launch.json", "app-run.json", "experiment.toml", "run-config.toml", "t/summary.json", "t/run.json"):
        assert (folder / name).is_file(), name
    rounds = [json.loads(line) for line in (folder / "t" / "rounds.jsonl").read_text().splitlines()]
    assert [r["server_round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["clock"] == "real" and r["num_accepted"] == 2
        clients = {c["partition_id"]: c for c in r["clients"]}
        assert {p: c["tier"] for p, c in clients.items()} == {0: "gpu-24g", 1: "cpu-1t"}
        assert clients[1]["threads"] == 1  # the CPU tier's torch threads
    info = assert_nothing_left(folder)
    assert json.loads((folder / "app-run.json").read_text())["status"] == "finished:completed"
    procs = {p["name"]: p for p in info["processes"]}
    cpu_node, gpu_node = procs["supernode-01-cpu-1t"], procs["supernode-00-gpu-24g"]
    # The CPU node and every process it started (its ClientApps) ran on one core, under 8 GiB.
    assert len(parse_cpus(cpu_node["cpus_seen"])) == 1 and len(cpu_node["pids_seen"]) > 1
    assert cpu_node["address_space_limit"] == 8192 << 20
    assert parse_cpus(gpu_node["cpus_seen"]) == set(os.sched_getaffinity(0)) and gpu_node["address_space_limit"] is None
    assert info["exit_code"] == 0


@pytest.mark.e2e
def test_a_failed_run_exits_non_zero_and_still_stops_everything(tmp_path, tiny_llama_dir):
    # flwr run exits 0 here; the launcher goes by Flower's status of the run.
    path = experiment(
        tmp_path, run=tiny_run(tiny_llama_dir, 1, 'scheduler = "no-such"\n'), groups='[[supernodes]]\ntier = "cpu-1t"\n'
    )
    folder = tmp_path / "launch"
    proc = launch(path, folder)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "finished:failed" in proc.stdout and "scheduler must be one of" in proc.stdout
    status = json.loads((folder / "app-run.json").read_text())
    assert status["status"] == "finished:failed" and status["flwr_run_exit"] == 0 and not status["ok"]
    assert_nothing_left(folder)


@pytest.mark.e2e
def test_ctrl_c_stops_everything_the_launch_started(tmp_path, tiny_llama_dir):
    path = experiment(tmp_path, run=tiny_run(tiny_llama_dir, 3), groups='[[supernodes]]\ntier = "cpu-1t"\n')
    folder = tmp_path / "launch"
    output = tmp_path / "launch.out"
    with open(output, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "flq"), "launch", str(path), "--results", str(folder)], stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + GUARD
        while not re.search(r"run \d+ started", output.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted: everything started has been stopped" in output.read_text()
    info = assert_nothing_left(folder)
    assert {p["name"] for p in info["processes"]} == {"superlink", "supernode-00-cpu-1t", "app-run"}


@pytest.mark.e2e
@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
def test_each_tier_reaches_the_superlink_over_its_own_emulated_link(tmp_path, tiny_llama_dir):
    path = experiment(
        tmp_path,
        body='[network]\nemulate = true\nlink = "node"\njitter-ms = 1\n',  # per node: here one node a group
        run=tiny_run(tiny_llama_dir, 1),
        groups='[[supernodes]]\ntier = "gpu-24g"\n\n[[supernodes]]\ntier = "cpu-1t"\njitter-ms = 5\n',
    )
    folder = tmp_path / "launch"
    proc = launch(path, folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "link for cpu-1t" in proc.stdout and "RTT 60 ms +-5 ms, loss 1.0%, up 5 Mb/s, down 25 Mb/s" in proc.stdout
    for i, name in enumerate(["supernode-00-gpu-24g", "supernode-01-cpu-1t"]):
        assert f"QUIC connected to 10.203.{i}.2:" in (folder / "logs" / f"{name}.log").read_text()
    info = assert_nothing_left(folder)
    for counts in info["network_counts"]:  # each link carried the node's traffic both ways
        up, down = (int(re.search(r"(\d+) delivered", part)[1]) for part in counts.split(";"))
        assert up > 50 and down > 50, counts
    rounds = [json.loads(line) for line in (folder / "t" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["num_accepted"] == 2
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in info["network"] if n["namespace"] in namespaces]  # removed on exit
