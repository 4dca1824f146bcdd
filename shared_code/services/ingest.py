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
    ParsedInstance,
    UploadMember,
    iter_upload,
    parse_instance,
)
from shared_code.errors import AlreadyExists, PreconditionFailed, Quarantine
from shared_code.ports import BlobStore, BlobVersion, MessageBus, StateStore
from shared_code.services import audit
from shared_code.services.quarantine import quarantine

_log = logging.getLogger(__name__)

UPLOADS = "uploads"
UNKNOWN_TENANT = "unknown-tenant"
_HASH_CHUNK = 4 * 1024 * 1024


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
    *,
    settings: Settings,
    blobs: BlobStore,
    bus: MessageBus,
    state: StateStore,
) -> IngestOutcome:
    """Unpack, check and stage one upload; quarantine the bad; record the outcome.

    The upload is streamed from the store (a zip is read member by member), and the
    version read is the one deleted at the end: a new version uploaded meanwhile
    stays for its own run.
    """
    container, _, path = blob_path.partition("/")
    tenant, name = split_upload_path(blob_path, settings.uploads_container)
    try:
        stream, version = blobs.open_read(container, path)
    except Quarantine as error:
        if error.reason != "blob_missing":
            raise
        # Deleted after an earlier run recorded its outcome (or never there).
        _log.info("upload already gone", extra={"tenant": tenant or UNKNOWN_TENANT})
        return IngestOutcome(tenant=tenant or UNKNOWN_TENANT, upload=blob_path)

    with stream:
        upload_key = _upload_key(blob_path, stream)
        if tenant not in settings.tenants:
            outcome = IngestOutcome(tenant=UNKNOWN_TENANT, upload=blob_path)
            unknown = Quarantine(
                "unknown_tenant", f"no tenant named {tenant!r} in uploads/"
            )
            _quarantine_whole(
                outcome, stream, unknown, settings, blobs, state, upload_key, name
            )
        else:
            outcome = _unpack(
                IngestOutcome(tenant=tenant, upload=blob_path),
                stream,
                version,
                name,
                upload_key,
                settings=settings,
                blobs=blobs,
                bus=bus,
                state=state,
            )
    return _finish(
        outcome,
        blob_path,
        version,
        upload_key,
        settings=settings,
        blobs=blobs,
        state=state,
    )


def _unpack(
    outcome: IngestOutcome,
    stream: BinaryIO,
    version: BlobVersion,
    name: str,
    upload_key: str,
    *,
    settings: Settings,
    blobs: BlobStore,
    bus: MessageBus,
    state: StateStore,
) -> IngestOutcome:
    """Stage every good member; announce them only once the whole upload passed."""
    pending: list[tuple[dict[str, str], ParsedInstance]] = []
    try:
        for item in iter_upload(name, stream, version.size, settings.limits):
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
                staged = _stage_member(
                    outcome, item, settings, blobs, state, upload_key=upload_key
                )
                if staged:
                    pending.append(staged)
    except Quarantine as error:
        # A zip found hostile or broken part-way: none of its members may go on.
        # Members already staged stay as unreferenced blobs (content-addressed,
        # possibly shared with another upload), cleaned up by the lifecycle policy.
        outcome.staged.clear()
        _quarantine_whole(
            outcome, stream, error, settings, blobs, state, upload_key, name
        )
        return outcome

    for message, parsed in pending:
        bus.send(
            settings.instances_queue,
            message,
            message_id=f"{outcome.tenant}:{message['sha256']}",
        )
        audit.record(
            state,
            outcome.tenant,
            "ingest",
            "staged",
            study_uid=parsed.study_instance_uid,
            sop_uid=parsed.sop_instance_uid,
            upload_key=upload_key,
        )
    return outcome


def _stage_member(
    outcome: IngestOutcome,
    member: UploadMember,
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
    *,
    upload_key: str,
) -> tuple[dict[str, str], ParsedInstance] | None:
    try:
        parsed = parse_instance(member.name, member.data, settings.limits)
    except Quarantine as error:
        _quarantine_member(
            outcome, member.name, member.data, error, settings, blobs, state, upload_key
        )
        return None

    sha256 = hashlib.sha256(member.data).hexdigest()
    staged = f"{outcome.tenant}/{sha256}.dcm"
    # The same bytes staged before are fine: the message is deduplicated.
    with contextlib.suppress(AlreadyExists):
        blobs.write(settings.instances_container, staged, member.data, overwrite=False)
    outcome.staged.append(staged)
    message = {
        "tenant": outcome.tenant,
        "upload": outcome.upload,
        "blob": staged,
        "sha256": sha256,
    }
    return message, parsed


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
        data=stream,
        error=error,
        step="ingest",
    )
    outcome.quarantined.append(
        {"member": "", "reason": error.reason, "detail": error.detail, "blob": where}
    )


def _finish(
    outcome: IngestOutcome,
    blob_path: str,
    version: BlobVersion,
    upload_key: str,
    *,
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
) -> IngestOutcome:
    """Record the outcome, then (only then) remove the version read from the inbox."""
    state.upsert(
        UPLOADS,
        {
            "id": upload_key,
            "pk": outcome.tenant,
            "blob": blob_path,
            "etag": version.etag,
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
        upload_key=upload_key,
    )
    container, _, name = blob_path.partition("/")
    try:
        blobs.delete(container, name, if_match=version.etag)
    except PreconditionFailed:
        # A new version arrived while this one was read: it is ingested on its own.
        _log.info("upload replaced while ingested", extra={"tenant": outcome.tenant})
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


def _upload_key(blob_path: str, stream: BinaryIO) -> str:
    """Names one upload by its path and content, not its (possibly identifying) name:
    the same file uploaded again lands on the same records and quarantine names."""
    content = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
        content.update(chunk)
    stream.seek(0)
    key = f"{blob_path}\n{content.hexdigest()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _safe_blob_name(member_name: str) -> str:
    """A member name fit to be a blob name: no traversal, no empty segments."""
    parts = [
        p for p in member_name.replace("\\", "/").split("/") if p not in ("", ".", "..")
    ]
    return "/".join(parts) or "upload"
