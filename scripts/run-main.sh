#!/usr/bin/env bash
# Set up, then run FLQ's main job: a local `flwr run` simulation on the embedded default
# (SmolLM2-135M fine-tuned with LoRA on BBC News, 6 non-IID clients in three tiers under a deadline:
# experiments/main-job.toml). Extra arguments go
# to `flwr run`, e.g.:  bash scripts/run-main.sh -c 'num-server-rounds=3'
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 PATH="$PWD/.venv/bin:$PATH"

port=${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-39091}
superlink_was_up=0
python - "$port" <<'PY' && superlink_was_up=1
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1)
except OSError:
    sys.exit(1)
PY
stop_our_superlink() {
  # `flwr run` leaves the local SuperLink it started running; stop it if we caused it.
  if [ "$superlink_was_up" = 0 ]; then
    pkill -f "flower-superlink .*--port $port( |$)" 2>/dev/null || true
  fi
}
trap stop_our_superlink EXIT

run_name="main-$(date +%Y%m%d-%H%M%S)"
# The main job's settings (experiments/main-job.toml) as key=value pairs: `flwr run` takes a TOML
# file or pairs, not both, and the pairs let the caller's own -c (in "$@") override any of them.
main_job=$(python - experiments/main-job.toml <<'PY'
import json, sys, tomllib
with open(sys.argv[1], "rb") as fh:
    print(" ".join(f"{key}={json.dumps(value)}" for key, value in tomllib.load(fh).items()))
PY
)
flwr run . flq-local --stream -c "$main_job output-dir=\"$PWD/runs\" run-name=\"$run_name\"" "$@"
# `flwr run` exits 0 even when the run failed: check what the ServerApp wrote.
if [ ! -f "runs/$run_name/summary.json" ]; then
  echo "FLQ main job failed: no runs/$run_name/summary.json (see the log above)" >&2
  exit 1
fi
flq report "runs/$run_name"
