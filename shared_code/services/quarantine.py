"""Setting bad input aside: the object goes to the quarantine container with its reason.

The reason is a JSON blob beside the object (``<name>.reason.json``) and an audit
record, so a PACS manager can see what was refused and why; nothing is silently dropped.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import BinaryIO

from shared_code.errors import Quarantine
from shared_code.ports import BlobStore, StateStore
from shared_code.services import audit

_log = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.json"


def quarantine(
    blobs: BlobStore,
    state: StateStore,
    container: str,
    *,
    tenant: str,
    source: str,
    name: str,
    data: bytes | BinaryIO,
    error: Quarantine,
    step: str,
) -> str:
    """Write ``data`` to ``{container}/{tenant}/{name}`` beside its reason.

    ``source`` names where the object came from (an upload blob, a member of a zip, a
    staged instance); ``name`` is unique per source, so writing again replaces the same
    quarantined copy instead of adding another.
    """
    blob_name = f"{tenant}/{name}"
    reason = {
        "reason": error.reason,
        "detail": error.detail,
        "tenant": tenant,
        "source": source,
        "step": step,
        "quarantined_at": datetime.now(UTC).isoformat(),
    }
    blobs.write(container, blob_name, data)
    blobs.write(
        container,
        blob_name + REASON_SUFFIX,
        json.dumps(reason, indent=2).encode(),
        content_type="application/json",
    )
    audit.record(
        state, tenant, step, "quarantined", detail=error.reason, blob=blob_name
    )
    _log.warning(
        "quarantined", extra={"tenant": tenant, "step": step, "reason": error.reason}
    )
    return blob_name
