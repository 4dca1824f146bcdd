#!/bin/sh
# azd postprovision: give every tenant a pseudonymisation key in Key Vault, once.
# An existing key is never replaced (that would change every research pseudonym);
# rotation is deliberate: docs/deploy.md. The key is never printed nor put on a
# command line: it goes from openssl to az through a private temporary file.
set -eu

: "${AZURE_KEY_VAULT_NAME:?run through azd (azd provision)}"
: "${EXCHANGE_TENANT_NAMES:?run through azd (azd provision)}"

umask 077
keyfile="$(mktemp)"
trap 'rm -f "$keyfile"' EXIT

for tenant in $EXCHANGE_TENANT_NAMES; do
  secret="pseudonym-key-$tenant"
  if az keyvault secret show --vault-name "$AZURE_KEY_VAULT_NAME" --name "$secret" \
      --query id -o tsv >/dev/null 2>&1; then
    echo "[postprovision] $secret exists; kept"
    continue
  fi
  # 48 random bytes, base64: 64 characters (config.py requires 32 or more).
  openssl rand -base64 48 | tr -d '\n' >"$keyfile"
  az keyvault secret set --vault-name "$AZURE_KEY_VAULT_NAME" --name "$secret" \
    --file "$keyfile" --encoding utf-8 --content-type "pseudonymisation key" \
    --query id -o tsv >/dev/null
  : >"$keyfile"
  echo "[postprovision] $secret created"
done
