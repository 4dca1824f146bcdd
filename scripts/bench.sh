#!/usr/bin/env bash
# Run the benchmarks by hand: creates .venv when missing, installs the app's and the
# benchmarks' requirements, then runs each benchmark in bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
  python3.11 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
fi
.venv/bin/pip install -q -r requirements-bench.txt

.venv/bin/python -m bench.deid_bench "$@"
