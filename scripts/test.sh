#!/usr/bin/env bash
# The tests: install what is missing, start the local stack, run ruff, mypy and pytest
# (lint and type checks run as tests too: tests/test_static.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/python -m localdev.stack start
exec .venv/bin/python -m pytest "$@"
