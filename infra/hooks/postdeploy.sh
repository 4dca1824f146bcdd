#!/bin/sh
# azd postdeploy: deliver blob-created events in `uploads` to the ingest function.
# Flex Consumption runs blob triggers from Event Grid (source=EventGrid in
# functions/ingest.py). The subscription's webhook is the blob extension's endpoint,
# which carries the blobs_extension system key: it exists only after the code is
# deployed, so Bicep cannot create this subscription (the DICOM one it can: a queue
# destination has no key and no handshake). The key is not printed.
set -eu

: "${AZURE_RESOURCE_GROUP:?run through azd (azd deploy)}"
: "${AZURE_FUNCTION_APP_NAME:?}"
: "${AZURE_BLOB_EVENTS_TOPIC_NAME:?}"

host="$(az functionapp show -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
  --query defaultHostName -o tsv)"
key=""
for attempt in 1 2 3 4 5 6; do
  key="$(az functionapp keys list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
    --query systemKeys.blobs_extension -o tsv 2>/dev/null || true)"
  [ -n "$key" ] && break
  echo "[postdeploy] waiting for the blob extension key ($attempt/6)"
  sleep 10
done
[ -n "$key" ] || { echo "[postdeploy] no blobs_extension key: is ingest deployed?" >&2; exit 1; }

az eventgrid system-topic event-subscription create \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --system-topic-name "$AZURE_BLOB_EVENTS_TOPIC_NAME" \
  --name ingest-uploads \
  --endpoint-type webhook \
  --endpoint "https://$host/runtime/webhooks/blobs?functionName=Host.Functions.ingest&code=$key" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with /blobServices/default/containers/uploads/ \
  --max-delivery-attempts 30 \
  --event-ttl 1440 \
  --output none
echo "[postdeploy] blob events in uploads/ go to the ingest function"
