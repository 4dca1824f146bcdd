"""DICOM change events in, FHIR resources out: the ``dicom-events`` use case."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from shared_code.config import Settings, SettingsError
from shared_code.domain.dicom_events import parse_dicom_event
from shared_code.errors import Quarantine
from shared_code.ports import DicomArchive, FhirStore, StateStore
from shared_code.services import audit
from shared_code.services.fhir_sync import SyncOutcome, sync_study
from shared_code.services.locks import lease

_log = logging.getLogger(__name__)


def handle_dicom_event(
    body: Mapping[str, Any],
    *,
    settings: Settings,
    archive_for: Callable[[str], DicomArchive],
    fhir_for: Callable[[str], FhirStore],
    state: StateStore,
) -> SyncOutcome:
    """Bring the event's study in FHIR up to date with the tenant's archive."""
    event = parse_dicom_event(body)
    try:
        tenant = settings.tenant_for_dicom_service(
            event.service_host_name, event.partition_name
        )
    except SettingsError as exc:
        raise Quarantine("unknown_dicom_service", str(exc)) from None

    # One sync per tenant at a time: two at once could both create the study's Patient
    # or ImagingStudy (conditional create is not atomic on every FHIR server).
    with lease(state, f"fhir-sync:{tenant.name}"):
        outcome = sync_study(
            event, tenant, archive_for(tenant.name), fhir_for(tenant.name)
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
        event_type=event.event_type.rsplit(".", 1)[-1],
    )
    return outcome
