"""FHIR requests per study: our coalesced, rebuild-and-write-once sync against the
one-write-per-instance approach (the reference DICOM-to-FHIR bridge's), in one run.

For studies of 1, 50 and 500 instances: the instances are stored by STOW-RS into the
local stack's trust-a Orthanc, then their DicomImageCreated events are handled in
the order they were raised, as one worker draining the queue would ("a study that
arrives at once"). POST+PUT counts write requests; the baseline's include its
conditional creates of Patient and Endpoint, one each per event, as its per-instance
transaction carries them. FHIR requests go to trust-a's sekmet-fhir and are
counted at the HTTP session, by method. Each run uses a fresh study, patient and
tenant name.

Also printed: the time from the first STOW-RS request to a complete ImagingStudy
(every instance in FHIR), with events handled right after the upload; this leaves
out the blob ingest and the queue, which the end-to-end test covers.

    .venv/bin/python -m bench.fhir_bench [--sizes 1 50 500]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shared_code.adapters.dicomweb import DicomWebArchive
from shared_code.adapters.fhir_http import FhirHttpStore
from shared_code.adapters.state_sqlite import SqliteStateStore
from shared_code.config import Settings, TenantSettings
from shared_code.domain import fhir_mapping
from shared_code.ports import JsonDict
from shared_code.services.fhir_sync import imaging_study_search
from shared_code.services.study_events import handle_dicom_event

ROOT = Path(__file__).resolve().parent.parent
PATIENT_SYSTEM = "https://fhir.nhs.uk/Id/local-patient-identifier"


class CountingSession(requests.Session):
    """A session that counts the requests it sends, by method."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def request(self, method: str | bytes, url: Any, *args: Any, **kwargs: Any) -> Any:
        self.counts[str(method).upper()] += 1
        return super().request(method, url, *args, **kwargs)

    @property
    def writes(self) -> int:
        return self.counts["POST"] + self.counts["PUT"]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Run:
    requests: int
    writes: int
    seconds: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50, 500])
    args = parser.parse_args()
    stack = json.loads((ROOT / ".local" / "stack.json").read_text())
    spec = stack["tenants"]["trust-a"]
    archive = DicomWebArchive(
        spec["dicomweb_root"], username=spec["username"], password=spec["password"]
    )
    state_dir = ROOT / ".local" / "bench"
    state_dir.mkdir(parents=True, exist_ok=True)

    print(
        f"{'instances':>9} | {'approach':<26} | {'requests':>8} | {'POST+PUT':>8} |"
        f" {'seconds':>7}"
    )
    for size in args.sizes:
        tenant = TenantSettings(
            name=f"bench-{uuid.uuid4().hex[:8]}",
            dicomweb_root=spec["dicomweb_root"],
            fhir_base_url=spec["fhir_base_url"],
            policy="clinical",
            dicom_service_host="127.0.0.1:18042",
            fhir_auth="none",
            patient_identifier_system=PATIENT_SYSTEM,
        )
        ours = _ours(size, tenant, archive, state_dir)
        baseline = _one_write_per_instance(size, tenant, archive)
        for name, run in (
            ("ours (coalesced rebuild)", ours),
            ("one write per instance", baseline),
        ):
            print(
                f"{size:>9} | {name:<26} | {run.requests:>8} | {run.writes:>8} |"
                f" {run.seconds:>7.2f}"
            )
        print(
            f"{'':>9} | {'ratio ours / baseline':<26} |"
            f" {ours.requests / baseline.requests:>8.3f} |"
            f" {ours.writes / baseline.writes:>8.3f} |"
        )


def _store_study(size: int, archive: DicomWebArchive) -> tuple[str, list[tuple]]:
    """``size`` CT instances of a new study; each with the time its STOW returned."""
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study_uid, series_uid = generate_uid(), generate_uid()
    template.PatientName, template.PatientID = "DOE^JANE", f"TEST{uuid.uuid4().hex[:8]}"
    stored = []
    for number in range(1, size + 1):
        template.StudyInstanceUID, template.SeriesInstanceUID = study_uid, series_uid
        template.SOPInstanceUID, template.InstanceNumber = generate_uid(), number
        buffer = io.BytesIO()
        template.save_as(buffer, enforce_file_format=True)
        outcome = archive.store_instance(buffer.getvalue())
        assert outcome.stored, outcome
        stored.append((template.SOPInstanceUID, series_uid, datetime.now(UTC)))
    return study_uid, stored


def _ours(
    size: int, tenant: TenantSettings, archive: DicomWebArchive, state_dir: Path
) -> Run:
    session = CountingSession()
    fhir = FhirHttpStore(tenant.fhir_base_url, session=session)
    state = SqliteStateStore(str(state_dir / f"{tenant.name}.sqlite3"))
    settings = _settings(tenant)
    started = time.perf_counter()
    study_uid, stored = _store_study(size, archive)
    for seq, (sop_uid, series_uid, at) in enumerate(stored, 1):
        handle_dicom_event(
            _event(tenant, study_uid, series_uid, sop_uid, seq, at),
            settings=settings,
            archive_for=lambda name: archive,
            fhir_for=lambda name: fhir,
            state=state,
        )
    seconds = time.perf_counter() - started
    counted = Run(session.total, session.writes, seconds)
    _check_complete(fhir, study_uid, size, tenant.name)
    return counted


def _one_write_per_instance(
    size: int, tenant: TenantSettings, archive: DicomWebArchive
) -> Run:
    """Per event: find the ImagingStudy, Patient and Endpoint, add the instance,
    write the ImagingStudy. Patient and Endpoint are created the first time."""
    session = CountingSession()
    fhir = FhirHttpStore(tenant.fhir_base_url, session=session)
    started = time.perf_counter()
    study_uid, stored = _store_study(size, archive)
    study_json = archive.search_studies(study_uid)[0]
    name = f"{tenant.name}-baseline"
    for sop_uid, series_uid, _ in stored:
        identifier = fhir_mapping.patient_identifier(study_json, PATIENT_SYSTEM)
        patient = fhir.conditional_create(
            fhir_mapping.build_patient(study_json, PATIENT_SYSTEM),
            f"identifier={identifier['system']}|{identifier['value']}",
        )
        endpoint = fhir.conditional_create(
            fhir_mapping.build_endpoint(archive.dicomweb_root, name),
            f"identifier={fhir_mapping.ENDPOINT_ID_SYSTEM}|{name}",
        )
        found = fhir.search("ImagingStudy", _params(_tagged(study_uid, name)))
        instance = {
            "uid": sop_uid,
            "sopClass": {
                "system": "urn:ietf:rfc:3986",
                "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
            },
        }
        new: JsonDict = {
            "resourceType": "ImagingStudy",
            "meta": fhir_mapping.tenant_meta(name),
            "identifier": [fhir_mapping.study_uid_identifier(study_uid)],
            "status": "available",
            "subject": {"reference": f"Patient/{patient['id']}"},
            "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}],
            "series": [
                {
                    "uid": series_uid,
                    "modality": {"system": fhir_mapping.DCM_SYSTEM, "code": "CT"},
                    "instance": [],
                }
            ],
        }
        study = found[0] if found else new
        study["series"][0]["instance"].append(instance)
        fhir.conditional_update(study, _tagged(study_uid, name))
    return Run(session.total, session.writes, time.perf_counter() - started)


def _check_complete(
    fhir: FhirHttpStore, study_uid: str, size: int, tenant: str
) -> None:
    (study,) = fhir.search("ImagingStudy", _params(_tagged(study_uid, tenant)))
    assert study["numberOfInstances"] == size, study["numberOfInstances"]


def _tagged(study_uid: str, tenant: str) -> str:
    # A local host watching trust-a's Orthanc syncs the same study as trust-a.
    tag = f"{fhir_mapping.TENANT_TAG_SYSTEM}|{tenant}"
    return f"{imaging_study_search(study_uid)}&_tag={tag}"


def _params(search: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(search))


def _event(
    tenant: TenantSettings,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    seq: int,
    at: datetime,
) -> JsonDict:
    return {
        "id": str(uuid.uuid4()),
        "eventType": "Microsoft.HealthcareApis.DicomImageCreated",
        "eventTime": at.isoformat(),
        "dataVersion": "1",
        "data": {
            "partitionName": tenant.partition_name,
            "imageStudyInstanceUid": study_uid,
            "imageSeriesInstanceUid": series_uid,
            "imageSopInstanceUid": sop_uid,
            "serviceHostName": tenant.dicom_service_host,
            "sequenceNumber": seq,
        },
    }


def _settings(tenant: TenantSettings) -> Settings:
    return Settings(
        storage_connection="UseDevelopmentStorage=true",
        storage_account_url="",
        bus_kind="storage-queue",
        servicebus_namespace="",
        state_kind="sqlite",
        sqlite_path="",
        cosmos_endpoint="",
        cosmos_database="",
        auth_mode="local",
        auth_issuer="",
        auth_audience="bench",
        auth_jwks_url="",
        auth_local_public_key_path="",
        managed_identity_client_id="",
        tenants={tenant.name: tenant},
    )


if __name__ == "__main__":
    main()
