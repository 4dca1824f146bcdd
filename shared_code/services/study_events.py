"""DICOM change events in, FHIR resources out: the ``dicom-events`` use case.

Events for one study come in bursts (one per instance) and are coalesced: the state
store keeps, per study, when the last successful sync *started* (``fhir_sync``
container). That sync saw every instance committed before it started, so an event
raised more than ``coalesce_margin`` seconds before it needs no sync of its own. The
margin covers clock skew between the DICOM service and us. Events without a
readable time are never skipped. What a skip could miss, the reconciliation heals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared_code.config import Settings, SettingsError, TenantSettings
from shared_code.domain.dicom_events import event_time, parse_dicom_event, parse_time
from shared_code.domain.redact import uid_hash
from shared_code.errors import Quarantine
from shared_code.ports import DicomArchive, FhirStore, StateStore
from shared_code.services import audit
from shared_code.services.fhir_sync import SyncOutcome, sync_study_uid
from shared_code.services.locks import lease

_log = logging.getLogger(__name__)

SYNC_MARKS = "fhir_sync"
COALESCE_MARGIN = 5.0


def handle_dicom_event(
    body: Mapping[str, Any],
    *,
    settings: Settings,
    archive_for: Callable[[str], DicomArchive],
    fhir_for: Callable[[str], FhirStore],
    state: StateStore,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    coalesce_margin: float = COALESCE_MARGIN,
) -> SyncOutcome | None:
    """Bring the event's study in FHIR up to date with the tenant's archive.

    ``None`` when a sync that started after the event already covered it.
    """
    event = parse_dicom_event(body)
    try:
        tenant = settings.tenant_for_dicom_service(
            event.service_host_name, event.partition_name
        )
    except SettingsError as exc:
        raise Quarantine("unknown_dicom_service", str(exc)) from None
    study_uid = event.study_instance_uid
    raised_at = event_time(event)
    margin = timedelta(seconds=coalesce_margin)

    if _covered(state, tenant.name, study_uid, raised_at, margin):
        _log_coalesced(tenant.name, study_uid)
        return None
    # One sync per tenant at a time: two at once could both create the study's Patient
    # (conditional create is not atomic on every FHIR server).
    with lease(state, f"fhir-sync:{tenant.name}"):
        # Checked again: the holder before us may have just covered this event.
        if _covered(state, tenant.name, study_uid, raised_at, margin):
            _log_coalesced(tenant.name, study_uid)
            return None
        outcome = sync_study_with_mark(
            study_uid,
            tenant,
            archive_for(tenant.name),
            fhir_for(tenant.name),
            state,
            clock,
        )
    audit.record(
        state,
        tenant.name,
        "fhir",
        outcome.status,
        study_uid=outcome.study_uid,
        imaging_study_id=outcome.imaging_study_id,
        series=outcome.series_count,
        instances=outcome.instance_count,
        fhir_writes=outcome.writes,
        event_type=event.event_type.rsplit(".", 1)[-1],
    )
    return outcome


def sync_study_with_mark(
    study_uid: str,
    tenant: TenantSettings,
    archive: DicomArchive,
    fhir: FhirStore,
    state: StateStore,
    clock: Callable[[], datetime],
) -> SyncOutcome:
    """Sync the study and, once it succeeded, record when it started."""
    started = clock()
    outcome = sync_study_uid(study_uid, tenant, archive, fhir)
    mark = state.get(SYNC_MARKS, tenant.name, study_uid)
    previous = parse_time(mark.get("synced_from")) if mark else None
    if previous is None or previous < started:
        state.upsert(
            SYNC_MARKS,
            {"id": study_uid, "pk": tenant.name, "synced_from": started.isoformat()},
        )
    return outcome


def _covered(
    state: StateStore,
    tenant: str,
    study_uid: str,
    raised_at: datetime | None,
    margin: timedelta,
) -> bool:
    if raised_at is None:
        return False
    mark = state.get(SYNC_MARKS, tenant, study_uid)
    synced_from = parse_time(mark.get("synced_from")) if mark else None
    return synced_from is not None and raised_at < synced_from - margin


def _log_coalesced(tenant: str, study_uid: str) -> None:
    _log.debug(
        "fhir sync coalesced",
        extra={
            "tenant": tenant,
            "study_uid_hash": uid_hash(study_uid),
            "outcome": "coalesced",
        },
    )
