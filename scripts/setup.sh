#!/usr/bin/env bash
# Set everything up, idempotently: a virtual environment in .venv with requirements.txt, and the sample data in data/.
# Usage: bash scripts/setup.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-monailabel.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements.txt (torch 2.13.0 first, so nothing pulls a CUDA build)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -r requirements.txt
    # monailabel without its dependencies (they would pull torchvision and a CUDA torch): see the file
    .venv/bin/python -m pip install -q --no-deps -r requirements-monailabel.txt
    echo "$want" > "$stamp"
else
    echo "[setup] .venv is up to date with requirements.txt"
fi
echo "[setup] preparing the sample data in data/"
.venv/bin/python scripts/prepare_data.py --out data
