"""Archive: one staged instance goes into its tenant's DICOM archive (STOW-RS).

The ``instances`` queue consumer's use case. The tenant's policy is applied first
(clinical keeps identity; research de-identifies with keyed pseudonyms and must pass
the leak check), then the object is stored once: the state store's ``instances``
record (the sha256 of what was stored under a SOP Instance UID) makes a redelivered
message a no-op and a different object under a known UID a conflict. Bad input goes
to quarantine and the message completes; transient failures (``RetryLater``)
propagate so the host retries and, in the end, dead-letters.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared_code.config import Settings, TenantSettings
from shared_code.domain import deid
from shared_code.domain.dicom_input import ParsedInstance, parse_instance, to_part10
from shared_code.domain.redact import uid_hash
from shared_code.errors import AlreadyExists, InstanceConflict, Quarantine
from shared_code.ports import BlobStore, DicomArchive, JsonDict, StateStore
from shared_code.services import audit
from shared_code.services.quarantine import quarantine

_log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")

INSTANCES = "instances"
STEP = "archive"


@dataclass(frozen=True)
class PreparedInstance:
    """An instance as it will be stored in one tenant's archive."""

    part10: bytes
    sha256: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    # Which rule acted on which attribute path (never values): kept for audit.
    deid_report: JsonDict | None = None


@dataclass(frozen=True)
class ArchiveOutcome:
    """What became of one staged instance: stored, already_stored or quarantined."""

    tenant: str
    outcome: str
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    reason: str = ""


def prepare_for_tenant(
    parsed: ParsedInstance, tenant: TenantSettings
) -> PreparedInstance:
    """Apply the tenant's policy and encode the result as Part 10 bytes.

    Research tenants get PS3.15 de-identification under the tenant's options and
    keyed pseudonyms. The leak gate takes its needles from the original before the
    engine runs and searches the encoded output after, so a surviving value (or a
    possible burned-in text the policy quarantines) raises ``Quarantine`` and the
    instance never reaches the archive.
    """
    dataset = parsed.dataset
    report_record: JsonDict | None = None
    if tenant.policy == "research":
        policy = deid.build_policy(
            tenant.deid_options, tenant.deid_safe_private, tenant.deid_burned_in
        )
        needles = deid.collect_needles(dataset, policy)
        report = deid.deidentify(dataset, tenant.pseudonym_key, policy)
        deid.check_no_leak(needles, dataset)
        _log.info(
            "de-identified",
            extra={
                "tenant": tenant.name,
                "deid_edition": report.edition,
                "deid_options": ",".join(report.options),
                "deid_actions": report.counts(),
                "burned_in_flagged": report.burned_in_risk,
            },
        )
        report_record = report.as_dict()

    part10 = to_part10(dataset)
    return PreparedInstance(
        part10=part10,
        sha256=hashlib.sha256(part10).hexdigest(),
        study_instance_uid=str(dataset.StudyInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        deid_report=report_record,
    )


def archive_instance(
    message: Mapping[str, Any],
    *,
    settings: Settings,
    blobs: BlobStore,
    archive_for: Callable[[str], DicomArchive],
    state: StateStore,
) -> ArchiveOutcome:
    """Store the staged instance named by an ``instances`` message.

    A message of the wrong shape raises ``Quarantine("malformed_message")``: there is
    no instance to set aside, so the caller sets the message itself aside.
    """
    _check_message(message)
    tenant_name = str(message["tenant"])
    blob = str(message["blob"])
    data: bytes | None = None
    try:
        tenant = _tenant(settings, tenant_name)
        data = _read_staged(message, settings, blobs, state)
        if data is None:
            # Stored and recorded by an earlier delivery that deleted the blob.
            return ArchiveOutcome(tenant_name, "already_stored")

        parsed = parse_instance(blob, data, settings.limits)
        prepared = prepare_for_tenant(parsed, tenant)
        outcome = _store_once(
            prepared, tenant_name, archive_for(tenant_name), state, message
        )
    except Quarantine as error:
        return _set_aside(message, data, error, settings, blobs, state)

    audit.record(
        state,
        tenant_name,
        STEP,
        outcome,
        study_uid=prepared.study_instance_uid,
        sop_uid=prepared.sop_instance_uid,
        deid_report=prepared.deid_report,
    )
    # Only now: a crash before the state record leaves the blob for the retry.
    blobs.delete(settings.instances_container, blob)
    _log.info(
        "archived",
        extra={
            "tenant": tenant_name,
            "outcome": outcome,
            "sop_uid_hash": uid_hash(prepared.sop_instance_uid),
        },
    )
    return ArchiveOutcome(
        tenant_name,
        outcome,
        sop_instance_uid=prepared.sop_instance_uid,
        study_instance_uid=prepared.study_instance_uid,
    )


def store_prepared(
    prepared: PreparedInstance, archive: DicomArchive
) -> tuple[bool, str]:
    """STOW-RS once; ``(True, "stored")`` or ``(False, "already_stored")``.

    An archive that already holds the SOP Instance UID is asked for its copy: the
    same bytes are success, other bytes an ``InstanceConflict``. This relies on the
    archive keeping the bytes it was sent (Orthanc and AHDS do for Part 10 input; an
    archive that rewrites headers would turn every redelivery into a conflict).
    """
    result = archive.store_instance(prepared.part10)
    if result.stored:
        return True, "stored"
    if not result.already_present:
        raise Quarantine(
            "dicom_store_failed",
            f"the archive refused the instance (FailureReason {result.failure_reason})",
        )

    held = archive.retrieve_instance(
        prepared.study_instance_uid,
        prepared.series_instance_uid,
        prepared.sop_instance_uid,
    )
    if hashlib.sha256(held).hexdigest() != prepared.sha256:
        raise InstanceConflict(
            "the archive holds a different object under this SOP Instance UID"
        )
    return False, "already_stored"


def _store_once(
    prepared: PreparedInstance,
    tenant: str,
    archive: DicomArchive,
    state: StateStore,
    message: Mapping[str, Any],
) -> str:
    """STOW-RS unless this object is already stored; a different one is a conflict.

    The SOP Instance UID is claimed with a create-only write before the STOW, so of two
    different objects racing under one new UID exactly one is stored and the other is
    reported as a conflict (Orthanc would answer both STOWs with success).
    """
    record = {
        "id": prepared.sop_instance_uid,
        "pk": tenant,
        "sha256": prepared.sha256,
        "study_uid": prepared.study_instance_uid,
        "series_uid": prepared.series_instance_uid,
        # Lets a redelivery find this record after the staged blob is gone.
        "source_sha256": str(message["sha256"]),
        "upload": str(message.get("upload", "")),
    }
    try:
        state.create(INSTANCES, {**record, "state": "storing"})
    except AlreadyExists:
        claimed = state.get(INSTANCES, tenant, prepared.sop_instance_uid) or {}
        if claimed.get("sha256") != prepared.sha256:
            raise InstanceConflict(
                "a different object was stored earlier under this SOP Instance UID"
            ) from None
        if claimed.get("state", "stored") == "stored":
            return "already_stored"
        # Claimed by an earlier delivery of this same object that did not finish.

    _, outcome = store_prepared(prepared, archive)
    state.upsert(INSTANCES, {**record, "state": "stored"})
    return outcome


def _check_message(message: Any) -> None:
    if not isinstance(message, Mapping):
        raise Quarantine("malformed_message", "the body is not a JSON object")
    fields = {key: message.get(key) for key in ("tenant", "blob", "sha256")}
    missing = [key for key, value in fields.items() if not isinstance(value, str)]
    if missing or not all(fields.values()):
        raise Quarantine(
            "malformed_message", f"tenant, blob and sha256 must be strings: {missing}"
        )
    if not _SHA256.fullmatch(fields["sha256"] or ""):
        raise Quarantine("malformed_message", "sha256 is not 64 hex digits")
    # A tenant's message may only name that tenant's staged blobs.
    if not str(fields["blob"]).startswith(f"{fields['tenant']}/"):
        raise Quarantine("malformed_message", "the blob is not under the tenant")


def _tenant(settings: Settings, name: str) -> TenantSettings:
    if name not in settings.tenants:
        raise Quarantine("unknown_tenant", "the message names no configured tenant")
    return settings.tenant(name)


def _read_staged(
    message: Mapping[str, Any],
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
) -> bytes | None:
    """The staged bytes, or ``None`` when an earlier delivery finished the work."""
    tenant, blob, sha256 = message["tenant"], message["blob"], message["sha256"]
    if not blobs.exists(settings.instances_container, blob):
        records = state.query(INSTANCES, tenant, source_sha256=sha256)
        if any(r.get("state", "stored") == "stored" for r in records):
            return None
        raise Quarantine("blob_missing", "the staged instance is gone")

    data = blobs.read(settings.instances_container, blob)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Quarantine("staged_blob_mismatch", "sha256 differs from the message")
    return data


def _set_aside(
    message: Mapping[str, Any],
    data: bytes | None,
    error: Quarantine,
    settings: Settings,
    blobs: BlobStore,
    state: StateStore,
) -> ArchiveOutcome:
    tenant, blob = str(message["tenant"]), str(message["blob"])
    if data is None and error.reason == "staged_blob_mismatch":
        data = blobs.read(settings.instances_container, blob)  # set the wrong one aside
    if data is None:
        # No instance to move aside (an unknown tenant, a staged blob that is gone):
        # the caller sets the message itself aside with this reason.
        raise error
    quarantine(
        blobs,
        state,
        settings.quarantine_container,
        tenant=tenant,
        source=f"{settings.instances_container}/{blob}",
        name=f"{STEP}/{blob.rsplit('/', 1)[-1]}",
        data=data,
        error=error,
        step=STEP,
    )
    blobs.delete(settings.instances_container, blob)
    return ArchiveOutcome(tenant, "quarantined", reason=error.reason)
