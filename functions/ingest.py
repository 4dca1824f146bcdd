"""Blob trigger: an upload in ``uploads/{tenant}/{name}`` is ingested."""

from __future__ import annotations

import azure.functions as func

from shared_code.services.ingest import ingest_upload
from shared_code.wiring import context

bp = func.Blueprint()


# Flex Consumption runs blob triggers from Event Grid; the local host polls instead.
@bp.blob_trigger(
    arg_name="upload",
    # Not uploads/{tenant}/{name}: an upload outside a tenant folder must be
    # quarantined with its reason, not ignored by a pattern that does not match.
    path="uploads/{name}",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def ingest(upload: func.InputStream) -> None:
    # Only the name is used: the use case streams the version it reads from the store.
    ctx = context()
    ingest_upload(
        upload.name or "",
        settings=ctx.settings,
        blobs=ctx.blobs,
        bus=ctx.bus,
        state=ctx.state,
    )
