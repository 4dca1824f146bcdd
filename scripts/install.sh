#!/usr/bin/env bash
# Install what the local stack and the tests need: Debian packages (Orthanc + DICOMweb,
# DCMTK, dicom3tools), the Node servers (Azurite, cosmosdb-server), the Python venv and
# checkov's venv (.venv-iac) for the offline Bicep checks.
# Idempotent and quick when everything is already there. Run from anywhere:
#   bash scripts/install.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(orthanc orthanc-dicomweb dcmtk dicom3tools)
PYTHON="${PYTHON:-python3.11}"

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

sha_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# --- tools that must already be there ------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 \
  || die "$PYTHON is missing: install Python 3.11 (Debian 12: apt-get install python3.11)"
command -v node >/dev/null 2>&1 \
  || die "node is missing: install Node.js 20 (e.g. apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 \
  || die "npm is missing: install npm (e.g. apt-get install npm)"

# --- Debian packages ---------------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
# Debian's own python3.11 needs python3.11-venv for `-m venv` (ensurepip).
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
  missing+=("python3.11-venv")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"
else
  log "Debian packages present: ${APT_PACKAGES[*]}"
fi

# --- Node servers (azurite, @vercel/cosmosdb-server) --------------------------------
node_stamp="node_modules/.install-stamp"
if [ -f package-lock.json ]; then
  node_sha="$(sha_of package.json package-lock.json)"
else
  node_sha="$(sha_of package.json)"
fi
if [ -x node_modules/.bin/azurite ] && [ -x node_modules/.bin/cosmosdb-server ] \
  && [ "$(cat "$node_stamp" 2>/dev/null)" = "$node_sha" ]; then
  log "node_modules up to date"
else
  if [ -f package-lock.json ]; then
    log "npm ci"
    npm ci --no-audit --no-fund
  else
    log "npm install (no package-lock.json)"
    npm install --no-audit --no-fund
    node_sha="$(sha_of package.json package-lock.json)"
  fi
  echo "$node_sha" >"$node_stamp"
fi

# --- Python venv ---------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
venv_stamp=".venv/.requirements.sha256"
req_sha="$(sha_of requirements.txt requirements-dev.txt)"
if [ "$(cat "$venv_stamp" 2>/dev/null)" = "$req_sha" ]; then
  log ".venv up to date"
else
  log "pip install -r requirements-dev.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$req_sha" >"$venv_stamp"
fi

# --- checkov for the offline Bicep checks, in a venv of its own (its pins clash) --------
if [ ! -x .venv-iac/bin/python ]; then
  log "creating .venv-iac with $PYTHON"
  "$PYTHON" -m venv .venv-iac
fi
iac_stamp=".venv-iac/.requirements.sha256"
iac_sha="$(sha_of requirements-iac.txt)"
if [ -x .venv-iac/bin/checkov ] && [ "$(cat "$iac_stamp" 2>/dev/null)" = "$iac_sha" ]; then
  log ".venv-iac up to date"
else
  log "pip install -r requirements-iac.txt into .venv-iac"
  .venv-iac/bin/python -m pip install -q --disable-pip-version-check -r requirements-iac.txt
  echo "$iac_sha" >"$iac_stamp"
fi

log "done; start the local stack with: .venv/bin/python -m localdev.stack start"
