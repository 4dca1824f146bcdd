"""Blob trigger: an upload in ``uploads/{tenant}/{name}`` is ingested."""

from __future__ import annotations

import io

import azure.functions as func

from shared_code.services.ingest import ingest_upload
from shared_code.wiring import context

bp = func.Blueprint()


# Flex Consumption runs blob triggers from Event Grid; the local host polls instead.
@bp.blob_trigger(
    arg_name="upload",
    path="uploads/{tenant}/{name}",
    connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)
def ingest(upload: func.InputStream) -> None:
    ctx = context()
    data = upload.read()
    ingest_upload(
        upload.name or "",
        io.BytesIO(data),
        len(data),
        settings=ctx.settings,
        blobs=ctx.blobs,
        bus=ctx.bus,
        state=ctx.state,
    )
