#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job on the embedded LiTS case. Arguments go to run_pipeline.py,
# e.g. `bash scripts/run.sh --profile smoke`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/run_pipeline.py "$@"
