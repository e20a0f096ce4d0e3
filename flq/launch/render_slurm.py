"""Slurm batch scripts for an experiment: one SuperLink job, one SuperNode job array per group.

    OUT/superlink.sbatch        certificates for its host, flq-superlink, then the app run (its exit
                                status is the run's); touches OUT/done when it ends
    OUT/supernodes-G-TIER.sbatch  a job array of the group's count: --cpus-per-task for CPU tiers,
                                --gres=gpu:N for GPU tiers, --mem for a memory limit
    OUT/submit.sh               sbatch the SuperLink job, then each array with --dependency=after:it
    OUT/run-config.toml         the run config (output-dir = OUT: the run directory lands there)

The jobs meet through files in OUT, which must be on a filesystem every compute node sees (as
the app folder must): the SuperLink job writes ``superlink.address`` (its host:port) once it
serves, node jobs wait for it, and stop when ``done`` appears. Paths are absolute, as rendered.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from . import commands
from .experiment import Experiment, NodeGroup, node_config

NODE_PORT_BASE = 9200  # a node's local ClientAppIo port is this + its partition id (unique per host)
SUPERLINK_SCRIPT = "superlink.sbatch"
SUBMIT_SCRIPT = "submit.sh"


def sh(arg: str) -> str:
    """One shell word. Words holding ``${...}`` (the scripts' own variables) are double-quoted so
    they expand; everything else is quoted literally."""
    if "${" not in arg:
        return shlex.quote(arg)
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def command_line(words: list[str], literal: tuple[str, ...] = ()) -> str:
    """``words`` as one line continued over several; ``literal`` words (from the experiment file)
    are never expanded."""
    parts = [shlex.quote(w) if w in literal else sh(w) for w in words]
    lines: list[str] = []
    for word, part in zip(words, parts, strict=True):
        last = lines[-1] if lines else None
        # The program's words on the first line, then one flag with its value per line.
        if last is not None and not word.startswith("--") and (not last.startswith("--") or " " not in last):
            lines[-1] += " " + part
        else:
            lines.append(part)
    return " \\\n  ".join(lines)


def group_script_name(index: int, group: NodeGroup) -> str:
    return f"supernodes-{index}-{group.tier.name}.sbatch"


def _header(exp: Experiment, job: str, output: str, cpus: int | None, extra: list[str]) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name=flq-{exp.name}-{job}", f"#SBATCH --output={output}"]
    lines += ["#SBATCH --nodes=1", "#SBATCH --ntasks=1"]
    if cpus:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
    lines += [f"#SBATCH {x}" for x in extra]
    lines.append(f"#SBATCH --time={exp.slurm.time}")
    if exp.slurm.partition:
        lines.append(f"#SBATCH --partition={exp.slurm.partition}")
    if exp.slurm.account:
        lines.append(f"#SBATCH --account={exp.slurm.account}")
    lines += [f"#SBATCH {arg}" for arg in exp.slurm.sbatch_args]
    return lines


def _preamble(exp: Experiment, out: Path) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in commands.FLOWER_ENV.items())
    return [
        "set -euo pipefail",
        f"RESULTS={shlex.quote(str(out))}",
        f"APP={shlex.quote(str(exp.app))}",
        'cd "${APP}"',
        "set +u  # setup lines (module load, a virtualenv's activate) may read unset variables",
        "# shellcheck disable=SC1091  # they source the cluster's files",
        "{",
        *(f"  {line}" for line in exp.slurm.setup),
        "}",
        "set -u",
        f"export {env}",
    ]


def superlink_script(exp: Experiment, out: Path) -> str:
    port = exp.slurm.port
    nodes = sum(g.count for g in exp.groups)
    superlink = commands.superlink_command(
        "${RESULTS}/certs", "0.0.0.0", port, "${RESULTS}/superlink.db", exp.superlink.args
    )
    app_run = commands.app_run_command(
        "${APP}",
        "${RESULTS}/run-config.toml",
        nodes,
        f"${{RESULTS}}/{exp.name}/rounds.jsonl",
        exp.nodes_timeout_s,
        exp.timeout_s,
    ) + ["--status-file", "${RESULTS}/app-run.json"]
    lines = _header(exp, "superlink", f"{out}/logs/superlink-job-%j.log", exp.slurm.superlink_cpus, [])
    lines += [
        f"# Rendered by `flq launch {exp.path.name} --render slurm` (docs/launch.md). Submit with submit.sh.",
        *_preamble(exp, out),
        'export FLWR_HOME="${RESULTS}/flwr-home"',
        'mkdir -p "${RESULTS}/logs" "${FLWR_HOME}"',
        'rm -f "${RESULTS}/superlink.address" "${RESULTS}/done"',
        "HOST=$(hostname -f 2>/dev/null || hostname)",
        "# The server certificate names the host the SuperNodes dial.",
        'python -m flq.transport.certs "${RESULTS}/certs" --name "${HOST}" --name "$(hostname)"',
        "# flwr (the app run, below) dials the SuperLink's Control API on this host.",
        'cat >"${FLWR_HOME}/config.toml" <<EOF',
        commands.connection_toml(f"127.0.0.1:{port}", f"${{RESULTS}}/certs/{commands.CA_CERT}").rstrip("\n"),
        "EOF",
        command_line(superlink, exp.superlink.args) + ' \\\n  >"${RESULTS}/logs/superlink.log" 2>&1 &',
        "SUPERLINK_PID=$!",
        "finish() {",
        '  touch "${RESULTS}/done"  # the SuperNode jobs end when they see it',
        '  kill "${SUPERLINK_PID}" 2>/dev/null || true',
        '  wait "${SUPERLINK_PID}" 2>/dev/null || true',
        "}",
        "trap finish EXIT",
        f'until grep -q {shlex.quote(commands.SUPERLINK_READY)} "${{RESULTS}}/logs/superlink.log"; do',
        '  if ! kill -0 "${SUPERLINK_PID}"; then',
        '    echo "flq-superlink exited: see ${RESULTS}/logs/superlink.log" >&2',
        "    exit 1",
        "  fi",
        "  sleep 1",
        "done",
        "# Published once the SuperLink serves: the SuperNode jobs wait for this file.",
        f'echo "${{HOST}}:{port}" >"${{RESULTS}}/superlink.address.tmp"',
        'mv "${RESULTS}/superlink.address.tmp" "${RESULTS}/superlink.address"',
        "# Waits for the nodes, runs the app, exits non-zero unless Flower says the run completed.",
        command_line(app_run),
    ]
    return "\n".join(lines) + "\n"


def group_script(exp: Experiment, out: Path, index: int, offset: int) -> str:
    group = exp.groups[index]
    total = sum(g.count for g in exp.groups)
    extra = [f"--array=0-{group.count - 1}"]
    if group.gpus:
        extra.append(f"--gres=gpu:{group.gpus}")
    if group.memory_mb:
        extra.append(f"--mem={group.memory_mb}M")
    tier = group.tier.name
    node = commands.supernode_command(
        "${SUPERLINK}",
        f"${{RESULTS}}/certs/{commands.CA_CERT}",
        "${NODE_PORT}",
        node_config("${PARTITION}", total, tier),
        group.args,
    )
    lines = _header(exp, tier, f"{out}/logs/{tier}-job-%A_%a.log", group.cpus, extra)
    lines += [
        f"# Rendered by `flq launch {exp.path.name} --render slurm`: {group.count} x tier {tier}.",
        *_preamble(exp, out),
        f"PARTITION=$(({offset} + ${{SLURM_ARRAY_TASK_ID:-0}}))",
        f"NODE_PORT=$(({NODE_PORT_BASE} + PARTITION))",
        f"NAME=$(printf 'supernode-%02d-{tier}' \"${{PARTITION}}\")",
        'export FLWR_HOME="${RESULTS}/flwr-home-${NAME}"  # one per node: nodes may share a host',
    ]
    if group.cpus:
        lines += [
            f"# A CPU tier: Slurm confines the job to its {group.cpus} cores; torch starts with as many threads.",
            f"export {' '.join(f'{k}={v}' for k, v in commands.thread_env(group.cpus).items())}",
        ]
    lines += [
        'mkdir -p "${RESULTS}/logs" "${FLWR_HOME}"',
        "# The SuperLink job started before this one (--dependency=after); wait until it serves.",
        'until [ -s "${RESULTS}/superlink.address" ]; do',
        '  [ -e "${RESULTS}/done" ] && { echo "the SuperLink job ended before this node started" >&2; exit 1; }',
        "  sleep 5",
        "done",
        'SUPERLINK=$(cat "${RESULTS}/superlink.address")',
        command_line(node, group.args) + ' \\\n  >"${RESULTS}/logs/${NAME}.log" 2>&1 &',
        "NODE_PID=$!",
        'trap \'kill "${NODE_PID}" 2>/dev/null || true; wait "${NODE_PID}" 2>/dev/null || true\' EXIT',
        "# Serve until the SuperLink job ends (it touches done), or until the node exits by itself.",
        'while kill -0 "${NODE_PID}" 2>/dev/null && [ ! -e "${RESULTS}/done" ]; do sleep 2; done',
    ]
    return "\n".join(lines) + "\n"


def submit_script(exp: Experiment, out: Path) -> str:
    lines = [
        "#!/bin/bash",
        f"# Submit experiment {exp.name}: the SuperLink job first, then the SuperNode job arrays, which",
        "# start only once it has started (--dependency=after). The run's outcome: app-run.json.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "mkdir -p logs && rm -f ./superlink.address ./done",
        f"SUPERLINK_JOB=$(sbatch --parsable {SUPERLINK_SCRIPT})",
        'SUPERLINK_JOB=${SUPERLINK_JOB%%;*}  # "id;cluster" on multi-cluster sites',
        'echo "SuperLink job ${SUPERLINK_JOB}"',
    ]
    for i, group in enumerate(exp.groups):
        lines += [
            f'JOB=$(sbatch --parsable --dependency="after:${{SUPERLINK_JOB}}" {group_script_name(i, group)})',
            f'echo "{group.count} x {group.tier.name}: job ${{JOB%%;*}}"',
        ]
    lines.append(f'echo "follow: tail -f {out}/logs/superlink-job-${{SUPERLINK_JOB}}.log"')
    return "\n".join(lines) + "\n"


def render_slurm(exp: Experiment, out: Path) -> list[Path]:
    out = Path(out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    written = [commands.write_run_config(out / "run-config.toml", exp.run_config_for(str(out)))]
    scripts = {SUPERLINK_SCRIPT: superlink_script(exp, out)}
    offset = 0
    for i, group in enumerate(exp.groups):
        scripts[group_script_name(i, group)] = group_script(exp, out, i, offset)
        offset += group.count
    scripts[SUBMIT_SCRIPT] = submit_script(exp, out)
    for name, text in scripts.items():
        path = out / name
        path.write_text(text)
        path.chmod(0o755)
        written.append(path)
    return written
