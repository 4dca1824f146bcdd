"""Mirroring a study from a tenant's DICOM archive into its FHIR service.

Each DICOM event only names the study to look at: the whole ImagingStudy is rebuilt
from the archive's current QIDO-RS view and written by conditional update on its
Study Instance UID identifier, with Patient and Endpoint written by conditional
create. A re-delivered, duplicated or out-of-order event therefore changes nothing,
and an ImagingStudy that already says what the archive holds is not written again,
so its version history does not grow by one per instance event.

A study no longer in the archive (every instance deleted) keeps its ImagingStudy for
audit, with status ``cancelled``, no series and zero counts; it comes back to
``available`` if the study is stored again. Its Patient and Endpoint stay.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

from shared_code.config import TenantSettings
from shared_code.domain import fhir_mapping
from shared_code.errors import Quarantine
from shared_code.ports import DicomArchive, DicomEvent, FhirStore, JsonDict

_log = logging.getLogger(__name__)

# Elements the server owns: a stored resource that differs only in these is the same.
_SERVER_ELEMENTS = ("id", "meta", "text")


@dataclass(frozen=True)
class SyncOutcome:
    """What the FHIR service holds for the study after one sync."""

    study_uid: str
    imaging_study_id: str | None
    status: Literal["synced", "removed"]
    series_count: int
    instance_count: int


def sync_study(
    event: DicomEvent,
    tenant: TenantSettings,
    archive: DicomArchive,
    fhir: FhirStore,
) -> SyncOutcome:
    """Make the tenant's ImagingStudy for the event's study match the archive."""
    study_uid = event.study_instance_uid
    studies = [
        study
        for study in archive.search_studies(study_uid)
        # An archive that ignores the UID filter must not map someone else's study.
        if fhir_mapping.text_value(study, fhir_mapping.STUDY_INSTANCE_UID) == study_uid
    ]
    if not studies:
        outcome = _cancel_removed_study(study_uid, fhir)
    else:
        outcome = _write_study(study_uid, studies[0], tenant, archive, fhir)

    _log.info(
        "fhir sync %s",
        outcome.status,
        extra={
            "tenant": tenant.name,
            "study_uid_hash": _uid_hash(study_uid),
            "event_type": event.event_type,
            "outcome": outcome.status,
            "series_count": outcome.series_count,
            "instance_count": outcome.instance_count,
        },
    )
    return outcome


def imaging_study_search(study_uid: str) -> str:
    """The search that finds the one ImagingStudy of a study."""
    identifier = fhir_mapping.study_uid_identifier(study_uid)
    return _token_search("identifier", identifier["system"], identifier["value"])


def _uid_hash(uid: str) -> str:
    """A UID as it may appear in logs: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def _write_study(
    study_uid: str,
    study_json: JsonDict,
    tenant: TenantSettings,
    archive: DicomArchive,
    fhir: FhirStore,
) -> SyncOutcome:
    series_list = archive.search_series(study_uid)
    instances_by_series = {
        series_uid: archive.search_instances(study_uid, series_uid)
        for series_uid in (
            fhir_mapping.text_value(series, fhir_mapping.SERIES_INSTANCE_UID)
            for series in series_list
        )
        if series_uid
    }

    patient_system = tenant.patient_identifier_system or _default_patient_system(tenant)
    patient = fhir_mapping.build_patient(study_json, patient_system)
    patient_id = patient["identifier"][0]
    stored_patient = fhir.conditional_create(
        patient,
        _token_search("identifier", patient_id["system"], patient_id["value"]),
    )

    endpoint = fhir_mapping.build_endpoint(archive.dicomweb_root, tenant.name)
    stored_endpoint = fhir.conditional_create(
        endpoint,
        _token_search("identifier", fhir_mapping.ENDPOINT_ID_SYSTEM, tenant.name),
    )

    imaging_study = fhir_mapping.build_imaging_study(
        study_json,
        series_list,
        instances_by_series,
        patient_ref=f"Patient/{stored_patient['id']}",
        endpoint_ref=f"Endpoint/{stored_endpoint['id']}",
    )
    stored = _put_if_changed(imaging_study, study_uid, fhir)
    return SyncOutcome(
        study_uid=study_uid,
        imaging_study_id=stored["id"],
        status="synced",
        series_count=imaging_study["numberOfSeries"],
        instance_count=imaging_study["numberOfInstances"],
    )


def _cancel_removed_study(study_uid: str, fhir: FhirStore) -> SyncOutcome:
    existing = _find_imaging_study(study_uid, fhir)
    if existing is None:
        return SyncOutcome(study_uid, None, "removed", 0, 0)

    cancelled = {
        key: value
        for key, value in existing.items()
        if key not in (*_SERVER_ELEMENTS, "series")
    }
    cancelled.update(status="cancelled", numberOfSeries=0, numberOfInstances=0)
    stored = _put_if_changed(cancelled, study_uid, fhir)
    return SyncOutcome(study_uid, stored["id"], "removed", 0, 0)


def _put_if_changed(
    imaging_study: JsonDict, study_uid: str, fhir: FhirStore
) -> JsonDict:
    """Conditional update, skipped when the stored ImagingStudy already says the same:
    every instance of a study raises an event, and each would add a version."""
    existing = _find_imaging_study(study_uid, fhir)
    if existing is not None and _content(existing) == _content(imaging_study):
        return existing
    return fhir.conditional_update(imaging_study, imaging_study_search(study_uid))


def _find_imaging_study(study_uid: str, fhir: FhirStore) -> JsonDict | None:
    identifier = fhir_mapping.study_uid_identifier(study_uid)
    matches = fhir.search(
        "ImagingStudy",
        {"identifier": f"{identifier['system']}|{identifier['value']}"},
    )
    if len(matches) > 1:
        raise Quarantine(
            "fhir_multiple_matches",
            f"{len(matches)} ImagingStudy resources for study {_uid_hash(study_uid)}",
        )
    return matches[0] if matches else None


def _content(resource: JsonDict) -> JsonDict:
    return {k: v for k, v in resource.items() if k not in _SERVER_ELEMENTS}


def _token_search(name: str, system: str, value: str) -> str:
    # Percent-encode what would break the query string (&, =, spaces in a Patient
    # ID) but keep the token's | and URI colons readable.
    return urlencode({name: f"{system}|{value}"}, quote_via=quote, safe=":|/")


def _default_patient_system(tenant: TenantSettings) -> str:
    # Without a configured issuer, Patient IDs are only unique within the tenant's
    # archive; a tenant-scoped URN keeps two tenants' "TEST0001" apart.
    return f"urn:dicom-exchange:{tenant.name}:patient-id"
