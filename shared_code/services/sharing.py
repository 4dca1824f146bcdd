"""Sharing a study between tenants: request, transfer instance by instance, status.

A share is a document in the state store's ``shares`` container. ``request_share``
checks the routing rules and queues it; ``transfer_share`` (the ``shares`` queue
consumer) copies the study from the source archive to the destination archive
(WADO-RS, the destination tenant's policy, STOW-RS), one instance in memory at a
time, and records its progress in the document so that a redelivered message goes
on where the last one stopped. Progress is keyed by a keyed hash of the source SOP
Instance UID, so a research destination cannot read clinical UIDs from it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import RE_VALID_UID

from shared_code.config import Limits, Settings, TenantSettings
from shared_code.domain.dicom_input import parse_instance
from shared_code.errors import (
    PreconditionFailed,
    Quarantine,
    RequestRejected,
    RetryLater,
)
from shared_code.ports import Clock, DicomArchive, JsonDict, MessageBus, StateStore
from shared_code.services import audit
from shared_code.services.archive import prepare_for_tenant, store_prepared
from shared_code.services.locks import lease

_log = logging.getLogger(__name__)

SHARES = "shares"
STEP = "share"
QUEUED, IN_PROGRESS, COMPLETE, FAILED = "QUEUED", "IN_PROGRESS", "COMPLETE", "FAILED"
_OPEN = (QUEUED, IN_PROGRESS)
_WRITE_ATTEMPTS = 5
_MAX_UID = 64

_SOP_INSTANCE_UID = "00080018"
_SERIES_INSTANCE_UID = "0020000E"
_STUDY_INSTANCE_UID = "0020000D"


def request_share(
    *,
    settings: Settings,
    state: StateStore,
    bus: MessageBus,
    archive_for: Callable[[str], DicomArchive],
    principal_tenant: str,
    study_uid: str,
    from_tenant: str,
    to_tenant: str,
    clock: Clock | None = None,
) -> JsonDict:
    """Queue a share of ``study_uid`` from one tenant to another; the share document.

    An identical share still queued or running is returned instead of a second one.
    """
    for name in (from_tenant, to_tenant):
        if name not in settings.tenants:
            raise RequestRejected(404, f"unknown tenant {name!r}")
    if principal_tenant != from_tenant:
        raise RequestRejected(403, "only the owning tenant can share its study")
    if to_tenant not in settings.tenant(from_tenant).share_to:
        raise RequestRejected(
            403, f"no routing rule lets {from_tenant} share to {to_tenant}"
        )
    if len(study_uid) > _MAX_UID or not RE_VALID_UID.fullmatch(study_uid):
        raise RequestRejected(400, "study_uid must be a DICOM UID")
    if not archive_for(from_tenant).search_studies(study_uid):
        raise RequestRejected(404, "no such study in the source archive")

    # One request at a time per (study, from, to): two racing requests must not both
    # find no open share and both create one.
    with lease(state, f"share:{from_tenant}:{to_tenant}:{study_uid}"):
        for share in state.query(
            SHARES,
            None,
            study_uid=study_uid,
            from_tenant=from_tenant,
            to_tenant=to_tenant,
        ):
            if share["status"] in _OPEN:
                # The first request's message may have been lost (a failed send, a
                # dead-lettered transfer): send again; a transfer resumes, not repeats.
                bus.send(
                    settings.shares_queue,
                    {"share_id": share["id"]},
                    message_id=share["id"],
                )
                return _public(share)

        now = _now(clock)
        share_id = str(uuid.uuid4())
        share = state.create(
            SHARES,
            {
                "id": share_id,
                "pk": share_id,
                "study_uid": study_uid,
                "from_tenant": from_tenant,
                "to_tenant": to_tenant,
                "status": QUEUED,
                "total": 0,
                "copied": 0,
                "failed": 0,
                "instances": {},
                "created_at": now,
                "updated_at": now,
            },
        )
        bus.send(settings.shares_queue, {"share_id": share_id}, message_id=share_id)
    audit.record(
        state, from_tenant, STEP, "requested", study_uid=study_uid, share_id=share_id
    )
    return _public(share)


def transfer_share(
    share_id: str,
    *,
    settings: Settings,
    state: StateStore,
    archive_for: Callable[[str], DicomArchive],
    clock: Clock | None = None,
) -> JsonDict:
    """Copy the share's study instance by instance; the final share document.

    ``RetryLater`` propagates with the progress kept, so the next delivery resumes.
    """
    share = state.get(SHARES, share_id, share_id)
    if share is None:
        raise Quarantine("share_missing", "no share document has this id")
    if share["status"] in (COMPLETE, FAILED):
        return _public(share)

    try:
        share = _transfer(share, settings, state, archive_for, clock)
    except Quarantine as error:
        # The study or an archive cannot be reached for good (gone, forbidden):
        # the share ends here with its reason, and the message is done.
        share = _update(state, share_id, clock, status=FAILED, reason=error.reason)
    audit.record(
        state,
        share["from_tenant"],
        STEP,
        share["status"].lower(),
        study_uid=share["study_uid"],
        share_id=share_id,
        copied=share["copied"],
        failed=share["failed"],
    )
    return _public(share)


def _transfer(
    share: JsonDict,
    settings: Settings,
    state: StateStore,
    archive_for: Callable[[str], DicomArchive],
    clock: Clock | None,
) -> JsonDict:
    share_id = share["id"]
    source = archive_for(share["from_tenant"])
    destination = archive_for(share["to_tenant"])
    to_tenant = settings.tenant(share["to_tenant"])
    study_uid = share["study_uid"]
    instances = source.search_instances(study_uid)
    share = _update(state, share_id, clock, status=IN_PROGRESS, total=len(instances))

    present = _present_in(destination, study_uid) if _keeps_uids(to_tenant) else set()
    for item in instances:
        sop_uid = _value(item, _SOP_INSTANCE_UID)
        key = _progress_key(to_tenant, sop_uid)
        if key in share["instances"]:
            continue
        if sop_uid in present:
            entry = {"status": "copied", "dest_sop_uid": sop_uid}
        else:
            entry = _copy_one(
                item, study_uid, source, destination, to_tenant, share, settings.limits
            )
        share = _update(state, share_id, clock, progress=(key, entry))

    return _finish(state, share_id, share, destination, clock)


def share_status(
    share_id: str, *, settings: Settings, state: StateStore, principal_tenant: str
) -> JsonDict:
    """The share document, for its source or destination tenant only.

    Anyone else gets 404, not 403: the existence of a share is not theirs to know.
    A destination that de-identifies sees neither the source Study Instance UID nor
    the per-instance progress: both would link its data back to clinical UIDs.
    """
    share = state.get(SHARES, share_id, share_id)
    if share is None or principal_tenant not in (
        share["from_tenant"],
        share["to_tenant"],
    ):
        raise RequestRejected(404, "no such share")
    if principal_tenant == share["to_tenant"] and not _keeps_uids(
        settings.tenant(principal_tenant)
    ):
        hidden = ("study_uid", "instances")
        return {k: v for k, v in _public(share).items() if k not in hidden}
    return _public(share)


def _copy_one(
    item: JsonDict,
    study_uid: str,
    source: DicomArchive,
    destination: DicomArchive,
    to_tenant: TenantSettings,
    share: JsonDict,
    limits: Limits,
) -> JsonDict:
    """WADO-RS one instance, apply the destination's policy, STOW-RS it."""
    series_uid = _value(item, _SERIES_INSTANCE_UID)
    sop_uid = _value(item, _SOP_INSTANCE_UID)
    try:
        part10 = source.retrieve_instance(study_uid, series_uid, sop_uid)
        parsed = parse_instance(f"{sop_uid}.dcm", part10, limits)
        del part10
        prepared = prepare_for_tenant(parsed, to_tenant)
        del parsed
        store_prepared(prepared, destination)
    except Quarantine as error:
        _log.warning(
            "share_instance_failed",
            extra={"share_id": share["id"], "reason": error.reason},
        )
        return {"status": "failed", "reason": error.reason}
    return {
        "status": "copied",
        "dest_sop_uid": prepared.sop_instance_uid,
        "dest_study_uid": prepared.study_instance_uid,
    }


def _finish(
    state: StateStore,
    share_id: str,
    share: JsonDict,
    destination: DicomArchive,
    clock: Clock | None,
) -> JsonDict:
    """COMPLETE only when every copied instance is visible in the destination."""
    if share["failed"]:
        return _update(state, share_id, clock, status=FAILED)

    entries = share["instances"].values()
    expected = {entry["dest_sop_uid"] for entry in entries}
    dest_studies = {
        entry.get("dest_study_uid") or share["study_uid"] for entry in entries
    }
    present: set[str] = set()
    for dest_study in dest_studies:
        present |= _present_in(destination, dest_study)
    missing = expected - present
    if missing or len(share["instances"]) < share["total"]:
        raise RetryLater(f"{len(missing)} copied instances not yet visible")
    return _update(state, share_id, clock, status=COMPLETE)


def _update(
    state: StateStore,
    share_id: str,
    clock: Clock | None,
    *,
    progress: tuple[str, JsonDict] | None = None,
    **fields: Any,
) -> JsonDict:
    """Change the share document under If-Match; reread and redo on a lost race."""
    for _ in range(_WRITE_ATTEMPTS):
        share = state.get(SHARES, share_id, share_id)
        if share is None:
            raise RetryLater("the share document disappeared")
        share.update(fields)
        if progress is not None:
            key, entry = progress
            share["instances"][key] = entry
        statuses = [entry["status"] for entry in share["instances"].values()]
        share["copied"] = statuses.count("copied")
        share["failed"] = statuses.count("failed")
        share["updated_at"] = _now(clock)
        try:
            return state.upsert(SHARES, share, if_match=share.get("_etag"))
        except PreconditionFailed:
            continue
    raise RetryLater("the share document kept changing under us")


def _present_in(archive: DicomArchive, study_uid: str) -> set[str]:
    return {
        _value(item, _SOP_INSTANCE_UID) for item in archive.search_instances(study_uid)
    }


def _keeps_uids(tenant: TenantSettings) -> bool:
    return tenant.policy == "clinical"


def _progress_key(tenant: TenantSettings, sop_uid: str) -> str:
    secret = tenant.pseudonym_key or b"clinical"
    return hmac.new(secret, sop_uid.encode(), hashlib.sha256).hexdigest()[:32]


def _value(item: JsonDict, tag: str) -> str:
    values = item.get(tag, {}).get("Value", [])
    if not values:
        raise Quarantine("dicom_incomplete", f"QIDO result lacks {tag}")
    return str(values[0])


def _public(share: JsonDict) -> JsonDict:
    return {key: value for key, value in share.items() if not key.startswith("_")}


def _now(clock: Clock | None) -> str:
    return (clock.now() if clock else datetime.now(UTC)).isoformat()
