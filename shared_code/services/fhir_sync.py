"""Mirroring a study from a tenant's DICOM archive into its FHIR service.

Each DICOM event only names the study to look at: the whole ImagingStudy is rebuilt
from the archive's current QIDO-RS view. A re-delivered, duplicated or out-of-order
event therefore changes nothing, and an ImagingStudy that already says what the
archive holds is not written again, so its version history does not grow by one
per instance event.

Writes are few and safe against concurrent writers:

1. The stored ImagingStudy (and its version) is read *before* the archive. Whoever
   writes after us read the archive after we read FHIR, so their view is newer.
2. The rebuilt ImagingStudy is written with If-Match on that version (a new one by
   conditional create). A 412 means another worker wrote meanwhile: we read FHIR and
   the archive again and rebuild, a few times, then ``RetryLater``.
3. Patient and Endpoint are looked up, and created only when missing, when the
   stored ImagingStudy does not already name the same Patient identifier; an
   unchanged study costs one FHIR search and no write.

A new study of a new patient costs three writes (Patient, Endpoint the first time
per tenant, ImagingStudy); every later change of the study costs one.

Every resource carries the tenant in ``meta.tag`` and lookups skip resources tagged
for another tenant, so on a FHIR service two tenants share, a patient of one tenant
is never linked to a study of another. Untagged resources (written before tags)
are adopted: a tenant's own FHIR service holds only its own.

Deleting the last instance of a series drops the series (the archive no longer lists
it). A study no longer in the archive (every instance deleted) keeps its ImagingStudy
for audit, with status ``cancelled``, no series and zero counts; it comes back to
``available`` if the study is stored again. Its Patient and Endpoint stay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode

from shared_code.config import TenantSettings
from shared_code.domain import fhir_mapping
from shared_code.domain.redact import uid_hash
from shared_code.errors import PreconditionFailed, Quarantine, RetryLater
from shared_code.ports import DicomArchive, DicomEvent, FhirStore, JsonDict

_log = logging.getLogger(__name__)

# Elements the server owns: a stored resource that differs only in these is the same.
_SERVER_ELEMENTS = ("id", "meta", "text")
# Rebuilds after a lost If-Match race before the message goes back to the bus.
_ATTEMPTS = 4


@dataclass(frozen=True)
class SyncOutcome:
    """What the FHIR service holds for the study after one sync."""

    study_uid: str
    imaging_study_id: str | None
    status: Literal["synced", "removed"]
    series_count: int
    instance_count: int
    # FHIR creates and updates this sync made (0: the study was already current).
    writes: int = field(default=0, compare=False)


def sync_study(
    event: DicomEvent,
    tenant: TenantSettings,
    archive: DicomArchive,
    fhir: FhirStore,
) -> SyncOutcome:
    """Make the tenant's ImagingStudy for the event's study match the archive."""
    outcome = sync_study_uid(event.study_instance_uid, tenant, archive, fhir)
    _log.info(
        "fhir sync %s",
        outcome.status,
        extra={
            "tenant": tenant.name,
            "study_uid_hash": uid_hash(outcome.study_uid),
            "event_type": event.event_type,
            "outcome": outcome.status,
            "series_count": outcome.series_count,
            "instance_count": outcome.instance_count,
            "fhir_writes": outcome.writes,
        },
    )
    return outcome


def sync_study_uid(
    study_uid: str,
    tenant: TenantSettings,
    archive: DicomArchive,
    fhir: FhirStore,
) -> SyncOutcome:
    """``sync_study`` for a Study Instance UID (the reconciliation's entry point)."""
    for _ in range(_ATTEMPTS):
        try:
            return _sync_once(study_uid, tenant, archive, fhir)
        except PreconditionFailed:
            # Another worker wrote the ImagingStudy after we read it: its view of
            # the archive may be newer than ours, so read both again.
            continue
    raise RetryLater(
        f"ImagingStudy of study {uid_hash(study_uid)} kept changing while we wrote",
        retry_after=1,
    )


def imaging_study_search(study_uid: str) -> str:
    """The search that finds the ImagingStudy of a study."""
    identifier = fhir_mapping.study_uid_identifier(study_uid)
    return _token_search("identifier", identifier["system"], identifier["value"])


def _sync_once(
    study_uid: str,
    tenant: TenantSettings,
    archive: DicomArchive,
    fhir: FhirStore,
) -> SyncOutcome:
    existing = _find_one(
        fhir, "ImagingStudy", imaging_study_search(study_uid), tenant.name
    )

    studies = [
        study
        for study in archive.search_studies(study_uid)
        # An archive that ignores the UID filter must not map someone else's study.
        if fhir_mapping.text_value(study, fhir_mapping.STUDY_INSTANCE_UID) == study_uid
    ]
    if not studies:
        return _cancel_removed_study(study_uid, existing, fhir)
    study_json = studies[0]
    series_list = archive.search_series(study_uid)
    instances_by_series = {
        series_uid: archive.search_instances(study_uid, series_uid)
        for series_uid in (
            fhir_mapping.text_value(series, fhir_mapping.SERIES_INSTANCE_UID)
            for series in series_list
        )
        if series_uid
    }

    system = fhir_mapping.patient_identifier_system(
        study_json, tenant.patient_identifier_system, _default_patient_system(tenant)
    )
    patient_identifier = fhir_mapping.patient_identifier(study_json, system)
    writes = 0
    refs = _references_of(existing, patient_identifier)
    if refs is None:
        patient_ref, patient_writes = _ensure_patient(study_json, system, tenant, fhir)
        endpoint_ref, endpoint_writes = _ensure_endpoint(
            archive.dicomweb_root, tenant, fhir
        )
        refs = (patient_ref, endpoint_ref)
        writes += patient_writes + endpoint_writes

    imaging_study = fhir_mapping.build_imaging_study(
        study_json,
        series_list,
        instances_by_series,
        patient_ref=refs[0],
        endpoint_ref=refs[1],
        patient_identifier=patient_identifier,
        tenant=tenant.name,
    )
    stored, study_writes = _write(imaging_study, existing, study_uid, tenant, fhir)
    return SyncOutcome(
        study_uid=study_uid,
        imaging_study_id=stored["id"],
        status="synced",
        series_count=imaging_study["numberOfSeries"],
        instance_count=imaging_study["numberOfInstances"],
        writes=writes + study_writes,
    )


def _references_of(
    existing: JsonDict | None, patient_identifier: JsonDict
) -> tuple[str, str] | None:
    """The stored ImagingStudy's Patient and Endpoint references, when it names the
    same Patient identifier: then neither needs looking up again."""
    if existing is None:
        return None
    subject = existing.get("subject", {})
    endpoints = existing.get("endpoint", [])
    if subject.get("identifier") != patient_identifier or not endpoints:
        return None
    patient_ref, endpoint_ref = subject.get("reference"), endpoints[0].get("reference")
    if not patient_ref or not endpoint_ref:
        return None
    return patient_ref, endpoint_ref


def _ensure_patient(
    study_json: JsonDict, system: str, tenant: TenantSettings, fhir: FhirStore
) -> tuple[str, int]:
    """The tenant's Patient with this identifier, created when missing. An existing
    Patient is not updated: demographics belong to the record system (the PAS)."""
    patient = fhir_mapping.build_patient(study_json, system, tenant.name)
    identifier = patient["identifier"][0]
    search = _token_search("identifier", identifier["system"], identifier["value"])
    found = _find_one(fhir, "Patient", search, tenant.name)
    if found is not None:
        return f"Patient/{found['id']}", 0
    stored = fhir.conditional_create(patient, f"{search}&{_tenant_search(tenant)}")
    return f"Patient/{stored['id']}", 1


def _ensure_endpoint(
    dicomweb_root: str, tenant: TenantSettings, fhir: FhirStore
) -> tuple[str, int]:
    """The tenant's WADO-RS Endpoint, created when missing and corrected when its
    address is no longer the tenant's DICOMweb root."""
    endpoint = fhir_mapping.build_endpoint(dicomweb_root, tenant.name)
    endpoint["meta"] = fhir_mapping.tenant_meta(tenant.name)
    search = _token_search("identifier", fhir_mapping.ENDPOINT_ID_SYSTEM, tenant.name)
    found = _find_one(fhir, "Endpoint", search, tenant.name)
    if found is None:
        stored = fhir.conditional_create(endpoint, f"{search}&{_tenant_search(tenant)}")
        return f"Endpoint/{stored['id']}", 1
    if _content(found) == _content(endpoint):
        return f"Endpoint/{found['id']}", 0
    stored = fhir.update(
        {**endpoint, "id": found["id"]}, if_match=found["meta"]["versionId"]
    )
    return f"Endpoint/{stored['id']}", 1


def _write(
    imaging_study: JsonDict,
    existing: JsonDict | None,
    study_uid: str,
    tenant: TenantSettings,
    fhir: FhirStore,
) -> tuple[JsonDict, int]:
    """Create, update with If-Match, or nothing when the stored one says the same."""
    if existing is None:
        search = f"{imaging_study_search(study_uid)}&{_tenant_search(tenant)}"
        stored = fhir.conditional_create(imaging_study, search)
        if _content(stored) != _content(imaging_study):
            # Someone else created it between our search and our create.
            raise PreconditionFailed("ImagingStudy created concurrently")
        return stored, 1
    if _content(existing) == _content(imaging_study):
        return existing, 0
    stored = fhir.update(
        {**imaging_study, "id": existing["id"]},
        if_match=existing["meta"]["versionId"],
    )
    return stored, 1


def _cancel_removed_study(
    study_uid: str, existing: JsonDict | None, fhir: FhirStore
) -> SyncOutcome:
    if existing is None:
        return SyncOutcome(study_uid, None, "removed", 0, 0)

    cancelled = {
        key: value for key, value in existing.items() if key not in ("text", "series")
    }
    cancelled.update(status="cancelled", numberOfSeries=0, numberOfInstances=0)
    writes = 0
    if _content(existing) != _content(cancelled):
        cancelled["meta"] = {
            key: value
            for key, value in existing.get("meta", {}).items()
            if key not in ("versionId", "lastUpdated")
        }
        fhir.update(cancelled, if_match=existing["meta"]["versionId"])
        writes = 1
    return SyncOutcome(study_uid, existing["id"], "removed", 0, 0, writes)


def _find_one(
    fhir: FhirStore, resource_type: str, search: str, tenant: str
) -> JsonDict | None:
    """The one resource of the tenant that ``search`` finds; two: quarantine."""
    params = dict(parse_qsl(search, keep_blank_values=True))
    matches = [
        resource
        for resource in fhir.search(resource_type, params)
        if _tenant_of(resource) in (None, tenant)
    ]
    if len(matches) > 1:
        raise Quarantine(
            "fhir_multiple_matches",
            f"{len(matches)} {resource_type} resources of tenant {tenant} match",
        )
    return matches[0] if matches else None


def _tenant_of(resource: JsonDict) -> str | None:
    for tag in resource.get("meta", {}).get("tag", []):
        if tag.get("system") == fhir_mapping.TENANT_TAG_SYSTEM:
            return str(tag.get("code"))
    return None


def _tenant_search(tenant: TenantSettings) -> str:
    return _token_search("_tag", fhir_mapping.TENANT_TAG_SYSTEM, tenant.name)


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
