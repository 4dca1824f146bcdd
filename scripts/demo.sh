#!/usr/bin/env bash
# The demo: install what is missing, start the local stack, run real DICOM through the
# pipeline, print the summary. Exits non-zero when the pipeline did not do its job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/python -m localdev.stack start
exec .venv/bin/python -m localdev.demo "$@"
