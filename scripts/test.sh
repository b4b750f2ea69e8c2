#!/usr/bin/env bash
# Set up if needed (scripts/setup.sh), then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One torch thread per test process unless told otherwise: the networks are tiny, so a second thread gains little,
# and on a busy machine two threads per process fight for the cores (the suite took 18 min instead of 3 that way).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest "$@"
