"""Ingest: one upload (a .dcm or a .zip) becomes staged instances and one message each.

An upload blob is ``uploads/{tenant}/{name}``. Every good instance is written once
to ``instances/{tenant}/{sha256}.dcm`` (content-addressed: a re-run writes nothing
new) and announced on the ``instances`` queue with a message id that Service Bus
deduplicates.
Bad members and bad uploads go to quarantine with their reason. The upload's outcome is
recorded in the state store before the upload blob is deleted, so a crash at any point
leaves the upload in place to be processed again: nothing is lost, nothing duplicated.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import BinaryIO

from shared_code.config import Settings
from shared_code.domain.dicom_input import (
    MemberRejected,
    MemberSkipped,
    UploadMember,
    iter_upload,
    parse_instance,
)
from shared_code.errors import AlreadyExists, Quarantine
from shared_code.ports import BlobStore, MessageBus, StateStore
from shared_code.services import audit
from shared_code.services.quarantine import quarantine

_log = logging.getLogger(__name__)

UPLOADS = "uploads"
UNKNOWN_TENANT = "unknown-tenant"


@dataclass
class IngestOutcome:
    """What became of one upload."""

    tenant: str
    upload: str
    staged: list[str] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.staged and self.quarantined:
            return "partially_accepted"
        if self.staged:
            return "accepted"
        if self.quarantined:
            return "quarantined"
        return "empty"


def split_upload_path(blob_path: str, uploads_container: str) -> tuple[str, str]:
    """``uploads/{tenant}/{name}`` → (tenant, name); '' as tenant when there is none."""
    _container, _, rest = blob_path.partition("/")
    if _container != uploads_container:
        rest = blob_path
    tenant, _, name = rest.partition("/")
    if not name:
        return "", tenant
    return tenant, name


def ingest_upload(
    blob_path: str,
    stream: BinaryIO,
    size: int,
    *,
    settings: Settings,
    blobs: BlobStore,
    bus: MessageBus,
    state: StateStore,
) -> IngestOutcome:
    """Unpack, check and stage one upload; quarantine the bad; record the outcome."""
    tenant, name = split_upload_path(blob_path, settings.uploads_container)
    upload_key = hashlib.sha256(blob_path.encode()).hexdigest()[:16]

    if tenant not in settings.tenants:
        outcome = IngestOutcome(tenant=UNKNOWN_TENANT, upload=blob_path)
        _quarantine_whole(
            outcome,
            stream,
            Quarantine("unknown_tenant", f"no tenant named {tenant!r} in uploads/"),
            settings=settings,
            blobs=blobs,
            state=state,
            upload_key=upload_key,
            name=name,
        )
        return _finish(outcome, blob_path, settings=settings, blobs=blobs, state=state)

    outcome = IngestOutcome(tenant=tenant, upload=blob_path)
    try:
        for item in iter_upload(name, stream, size, settings.limits):
            if isinstance(item, MemberSkipped):
                outcome.skipped.append({"member": item.name, "reason": item.reason})
            elif isinstance(item, MemberRejected):
                _quarantine_member(
                    outcome,
                    item.name,
                    b"",
                    item.error,
                    settings,
                    blobs,
                    state,
                    upload_key,
                )
            else:
                _stage_member(
                    outcome, item, settings, blobs, bus, state, upload_key=upload_key
                )
    except Quarantine as error:
        _quarantine_whole(
            outcome,
            stream,
            error,
            settings=settings,
            blobs=blobs,
            state=state,
            upload_key=upload_key,
            name=name,
        )
    return _finish(outcome, blob_path, settings=settings, blobs=blobs, state=state)


def _stage_member(
    outcome: IngestOutcome,
    member: UploadMember,
    settings: Settings,
    blobs: BlobStore,
    bus: MessageBus,
    state: StateStore,
    *,
    upload_key: str,
) -> None:
    try:
        parsed = parse_instance(member.name, member.data, settings.limits)
    except Quarantine as error:
        _quarantine_member(
            outcome, member.name, member.data, error, settings, blobs, state, upload_key
        )
        return

    sha256 = hashlib.sha256(member.data).hexdigest()
    staged = f"{outcome.tenant}/{sha256}.dcm"
    # The same bytes staged before are fine: the message below is deduplicated.
    with contextlib.suppress(AlreadyExists):
        blobs.write(settings.instances_container, staged, member.data, overwrite=False)
    bus.send(
        settings.instances_queue,
        {
            "tenant": outcome.tenant,
            "upload": outcome.upload,
            "blob": staged,
            "sha256": sha256,
        },
        message_id=f"{outcome.tenant}:{sha256}",
    )
    outcome.staged.append(staged)
    audit.record(
        state,
        outcome.tenant,
        "ingest",
        "staged",
        study_uid=parsed.study_instance_uid,
        sop_uid=parsed.sop_instance_uid,
        blob=staged,
    )


def _quarantine_member(
    outcome: IngestOutcome,
    member_name: str,
    data: bytes,
    error: Quarantine,
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
    upload_key: str,
) -> None:
    safe_name = _safe_blob_name(member_name)
    where = quarantine(
        blobs,
        state,
        settings.quarantine_container,
        tenant=outcome.tenant,
        source=f"{outcome.upload}#{member_name}",
        name=f"{upload_key}/{safe_name}",
        data=data,
        error=error,
        step="ingest",
    )
    outcome.quarantined.append(
        {
            "member": member_name,
            "reason": error.reason,
            "detail": error.detail,
            "blob": where,
        }
    )


def _quarantine_whole(
    outcome: IngestOutcome,
    stream: BinaryIO,
    error: Quarantine,
    *,
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
    upload_key: str,
    name: str,
) -> None:
    stream.seek(0)
    where = quarantine(
        blobs,
        state,
        settings.quarantine_container,
        tenant=outcome.tenant,
        source=outcome.upload,
        name=f"{upload_key}/{_safe_blob_name(name)}",
        data=stream.read(),
        error=error,
        step="ingest",
    )
    outcome.quarantined.append(
        {"member": "", "reason": error.reason, "detail": error.detail, "blob": where}
    )


def _finish(
    outcome: IngestOutcome,
    blob_path: str,
    *,
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
) -> IngestOutcome:
    """Record the outcome, then (only then) remove the upload from the inbox."""
    state.upsert(
        UPLOADS,
        {
            "id": hashlib.sha256(blob_path.encode()).hexdigest(),
            "pk": outcome.tenant,
            "blob": blob_path,
            "outcome": outcome.outcome,
            "staged": outcome.staged,
            "quarantined": outcome.quarantined,
            "skipped": outcome.skipped,
        },
    )
    audit.record(
        state,
        outcome.tenant,
        "ingest",
        outcome.outcome,
        detail=f"{len(outcome.staged)} staged, {len(outcome.quarantined)} quarantined",
        upload=blob_path,
    )
    container, _, name = blob_path.partition("/")
    blobs.delete(container, name)
    _log.info(
        "upload ingested",
        extra={
            "tenant": outcome.tenant,
            "outcome": outcome.outcome,
            "staged": len(outcome.staged),
            "quarantined": len(outcome.quarantined),
        },
    )
    return outcome


def _safe_blob_name(member_name: str) -> str:
    """A member name fit to be a blob name: no traversal, no empty segments."""
    parts = [
        p for p in member_name.replace("\\", "/").split("/") if p not in ("", ".", "..")
    ]
    return "/".join(parts) or "upload"
