"""sync_study and FhirHttpStore against the real local FHIR R4 server (sekmet-fhir).

The archive is a test double of our own port that answers QIDO-RS from pydicom's
test files; the FHIR server is real. Every test uses its own study, Patient ID and
tenant name, so runs do not see each other's resources in a long-lived server.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from shared_code.adapters.fhir_http import AUTH_RETRY_AFTER_SECONDS, FhirHttpStore
from shared_code.adapters.state_sqlite import SqliteStateStore
from shared_code.config import Settings, TenantSettings
from shared_code.domain.dicom_events import IMAGE_CREATED, IMAGE_DELETED
from shared_code.errors import Quarantine, RetryLater
from shared_code.ports import DicomEvent, JsonDict, StoreOutcome
from shared_code.services.fhir_sync import SyncOutcome, sync_study
from shared_code.services.study_events import handle_dicom_event
from tests.unit.domain.test_fhir_mapping import (
    INSTANCE_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
)

PATIENT_SYSTEM = "https://fhir.nhs.uk/Id/local-patient-identifier"
DICOMWEB_ROOT = "http://127.0.0.1:18042/dicom-web"


def pydicom_file(name: str) -> Dataset:
    """One of pydicom's packaged test files."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom test file {name} is missing"
    return pydicom.dcmread(path)


class QidoArchive:
    """``ports.DicomArchive`` answering QIDO-RS from datasets held in memory."""

    def __init__(self, datasets: list[Dataset]) -> None:
        self.datasets = datasets

    @property
    def dicomweb_root(self) -> str:
        return DICOMWEB_ROOT

    def store_instance(self, part10: bytes) -> StoreOutcome:
        raise NotImplementedError("the FHIR sync only queries the archive")

    def retrieve_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> bytes:
        raise NotImplementedError("the FHIR sync only queries the archive")

    def search_studies(self, study_instance_uid: str | None = None) -> list[JsonDict]:
        studies: dict[str, JsonDict] = {}
        for ds in self._of(study_instance_uid):
            studies.setdefault(ds.StudyInstanceUID, _json(ds, STUDY_KEYWORDS))
        return list(studies.values())

    def search_series(self, study_instance_uid: str) -> list[JsonDict]:
        series: dict[str, JsonDict] = {}
        for ds in self._of(study_instance_uid):
            series.setdefault(ds.SeriesInstanceUID, _json(ds, SERIES_KEYWORDS))
        return list(series.values())

    def search_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[JsonDict]:
        return [
            _json(ds, INSTANCE_KEYWORDS)
            for ds in self._of(study_instance_uid)
            if series_instance_uid in (None, ds.SeriesInstanceUID)
        ]

    def _of(self, study_uid: str | None) -> list[Dataset]:
        return [ds for ds in self.datasets if study_uid in (None, ds.StudyInstanceUID)]


def _json(ds: Dataset, keywords: tuple[str, ...]) -> JsonDict:
    subset = Dataset()
    for keyword in keywords:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return subset.to_json_dict()


def _new_study(patient_id: str) -> list[Dataset]:
    """A CT series of two instances and an MR series, under fresh UIDs."""
    study_uid, ct_series_uid = generate_uid(), generate_uid()
    datasets: list[Dataset] = []
    for name, series_uid, number in (
        ("CT_small.dcm", ct_series_uid, 1),
        ("CT_small.dcm", ct_series_uid, 2),
        ("MR_small.dcm", generate_uid(), 1),
    ):
        ds = pydicom_file(name)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        ds.PatientName = "DOE^JANE"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.StudyDate, ds.StudyTime = "20040119", "072730"
        ds.TimezoneOffsetFromUTC = "+0000"
        ds.AccessionNumber = "ACC0001"
        datasets.append(ds)
    datasets[2].SeriesNumber = 2
    return datasets


def _event(ds: Dataset, event_type: str = IMAGE_CREATED, seq: int = 1) -> DicomEvent:
    return DicomEvent(
        event_type=event_type,
        partition_name="Microsoft.Default",
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        service_host_name="127.0.0.1",
        sequence_number=seq,
    )


@pytest.fixture()
def fhir_base_url(stack: dict[str, Any]) -> str:
    return str(stack["tenants"]["trust-a"]["fhir_base_url"])


@pytest.fixture()
def fhir(fhir_base_url: str) -> FhirHttpStore:
    return FhirHttpStore(fhir_base_url)


@pytest.fixture()
def tenant(fhir_base_url: str) -> TenantSettings:
    return TenantSettings(
        name=f"trust-a-{uuid.uuid4().hex[:8]}",
        dicomweb_root=DICOMWEB_ROOT,
        fhir_base_url=fhir_base_url,
        policy="clinical",
        dicom_service_host="127.0.0.1",
        fhir_auth="none",
        patient_identifier_system=PATIENT_SYSTEM,
    )


@pytest.fixture()
def patient_id() -> str:
    return f"TEST{uuid.uuid4().hex[:8].upper()}"


def _imaging_studies(fhir: FhirHttpStore, study_uid: str) -> list[JsonDict]:
    return fhir.search(
        "ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    )


def _archive_uids(archive: QidoArchive, study_uid: str) -> dict[str, set[str]]:
    return {
        series["0020000E"]["Value"][0]: {
            instance["00080018"]["Value"][0]
            for instance in archive.search_instances(
                study_uid, series["0020000E"]["Value"][0]
            )
        }
        for series in archive.search_series(study_uid)
    }


def _fhir_uids(imaging_study: JsonDict) -> dict[str, set[str]]:
    return {
        series["uid"]: {instance["uid"] for instance in series["instance"]}
        for series in imaging_study.get("series", [])
    }


# The server


def test_the_fhir_server_supports_conditional_create_and_update(
    fhir_base_url: str, patient_id: str
) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": patient_id}],
    }
    search = f"identifier={PATIENT_SYSTEM}|{patient_id}"

    created = requests.post(
        f"{fhir_base_url}/Patient",
        json=patient,
        headers={**headers, "If-None-Exist": search},
        timeout=10,
    )
    found = requests.post(
        f"{fhir_base_url}/Patient",
        json=patient,
        headers={**headers, "If-None-Exist": search},
        timeout=10,
    )
    updated = requests.put(
        f"{fhir_base_url}/Patient?{search}",
        json={**patient, "gender": "female"},
        headers=headers,
        timeout=10,
    )

    assert (created.status_code, found.status_code, updated.status_code) == (
        201,
        200,
        200,
    )
    assert created.json()["id"] == found.json()["id"] == updated.json()["id"]
    assert updated.json()["gender"] == "female"


# Syncing


def test_syncing_a_study_twice_leaves_one_of_each_unchanged(
    fhir: FhirHttpStore, tenant: TenantSettings, patient_id: str
) -> None:
    archive = QidoArchive(_new_study(patient_id))
    first_ds = archive.datasets[0]
    study_uid = first_ds.StudyInstanceUID

    first = sync_study(_event(first_ds, seq=1), tenant, archive, fhir)
    stored_first = _imaging_studies(fhir, study_uid)
    # The same event again, and an older event for another instance of the study.
    second = sync_study(_event(first_ds, seq=1), tenant, archive, fhir)
    sync_study(_event(archive.datasets[2], seq=0), tenant, archive, fhir)

    stored = _imaging_studies(fhir, study_uid)
    assert len(stored) == 1
    assert second == first
    assert (first.status, first.series_count, first.instance_count) == ("synced", 2, 3)
    # Not written again: the stored ImagingStudy already said the same.
    assert stored[0]["meta"]["versionId"] == stored_first[0]["meta"]["versionId"]
    assert stored[0]["id"] == first.imaging_study_id
    assert stored[0]["numberOfSeries"] == 2
    assert stored[0]["numberOfInstances"] == 3
    assert _fhir_uids(stored[0]) == _archive_uids(archive, study_uid)
    assert stored[0]["started"] == "2004-01-19T07:27:30+00:00"

    patients = fhir.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|{patient_id}"})
    endpoints = fhir.search(
        "Endpoint", {"identifier": f"urn:dicom-exchange:endpoint|{tenant.name}"}
    )
    assert len(patients) == 1
    assert len(endpoints) == 1
    assert patients[0]["meta"]["versionId"] == "1"
    assert endpoints[0]["meta"]["versionId"] == "1"
    assert stored[0]["subject"] == {
        "reference": f"Patient/{patients[0]['id']}",
        "identifier": {"system": PATIENT_SYSTEM, "value": patient_id},
    }
    assert first.writes == 3
    assert second.writes == 0
    assert stored[0]["endpoint"] == [{"reference": f"Endpoint/{endpoints[0]['id']}"}]
    assert endpoints[0]["address"] == DICOMWEB_ROOT


def test_a_new_instance_updates_the_imaging_study_in_place(
    fhir: FhirHttpStore, tenant: TenantSettings, patient_id: str
) -> None:
    archive = QidoArchive(_new_study(patient_id)[:2])
    study_uid = archive.datasets[0].StudyInstanceUID
    sync_study(_event(archive.datasets[0]), tenant, archive, fhir)
    before = _imaging_studies(fhir, study_uid)[0]

    mr = _new_study(patient_id)[2]
    mr.StudyInstanceUID = study_uid
    archive.datasets.append(mr)
    outcome = sync_study(_event(mr, seq=2), tenant, archive, fhir)

    (after,) = _imaging_studies(fhir, study_uid)
    assert after["id"] == before["id"]
    assert int(after["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1
    assert (outcome.series_count, outcome.instance_count) == (2, 3)
    assert _fhir_uids(after) == _archive_uids(archive, study_uid)
    assert [m["code"] for m in after["modality"]] == ["CT", "MR"]


def test_a_deleted_study_becomes_cancelled_and_comes_back(
    fhir: FhirHttpStore, tenant: TenantSettings, patient_id: str
) -> None:
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets))
    study_uid = datasets[0].StudyInstanceUID
    synced = sync_study(_event(datasets[0]), tenant, archive, fhir)

    archive.datasets.clear()
    removed = sync_study(_event(datasets[0], IMAGE_DELETED, 2), tenant, archive, fhir)
    (cancelled,) = _imaging_studies(fhir, study_uid)
    again = sync_study(_event(datasets[1], IMAGE_DELETED, 3), tenant, archive, fhir)

    assert removed == again
    assert (removed.status, removed.series_count, removed.instance_count) == (
        "removed",
        0,
        0,
    )
    assert removed.imaging_study_id == synced.imaging_study_id
    (stored,) = _imaging_studies(fhir, study_uid)
    assert stored["meta"]["versionId"] == cancelled["meta"]["versionId"]
    assert stored["status"] == "cancelled"
    assert (stored["numberOfSeries"], stored["numberOfInstances"]) == (0, 0)
    assert "series" not in stored

    archive.datasets.extend(datasets)
    sync_study(_event(datasets[0], seq=4), tenant, archive, fhir)
    (restored,) = _imaging_studies(fhir, study_uid)
    assert restored["status"] == "available"
    assert restored["numberOfInstances"] == 3


def test_a_study_never_synced_and_gone_is_only_reported(
    fhir: FhirHttpStore, tenant: TenantSettings, patient_id: str
) -> None:
    ds = _new_study(patient_id)[0]

    outcome = sync_study(_event(ds, IMAGE_DELETED), tenant, QidoArchive([]), fhir)

    assert (outcome.status, outcome.imaging_study_id) == ("removed", None)
    assert _imaging_studies(fhir, ds.StudyInstanceUID) == []


# The adapter


def test_conditional_create_returns_the_existing_resource(
    fhir: FhirHttpStore, patient_id: str
) -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": patient_id}],
    }
    search = f"identifier={PATIENT_SYSTEM}|{patient_id}"

    first = fhir.conditional_create(patient, search)
    second = fhir.conditional_create({**patient, "gender": "male"}, search)

    assert second["id"] == first["id"]
    assert "gender" not in second
    assert fhir.read("Patient", first["id"]) == second
    assert fhir.read("Patient", str(uuid.uuid4())) is None


def test_search_follows_next_links(fhir: FhirHttpStore, patient_id: str) -> None:
    for family in ("DOE", "ROE", "POE"):
        fhir.conditional_create(
            {
                "resourceType": "Patient",
                "identifier": [{"system": PATIENT_SYSTEM, "value": patient_id}],
                "name": [{"family": family}],
            },
            f"identifier={PATIENT_SYSTEM}|{patient_id}&family={family}",
        )

    found = fhir.search(
        "Patient", {"identifier": f"{PATIENT_SYSTEM}|{patient_id}", "_count": "1"}
    )

    assert sorted(p["name"][0]["family"] for p in found) == ["DOE", "POE", "ROE"]


def test_multiple_matches_are_quarantined(fhir: FhirHttpStore, patient_id: str) -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": patient_id}],
    }
    for family in ("DOE", "ROE"):
        fhir.conditional_create(
            {**patient, "name": [{"family": family}]},
            f"identifier={PATIENT_SYSTEM}|{patient_id}&family={family}",
        )

    with pytest.raises(Quarantine) as caught:
        fhir.conditional_update(patient, f"identifier={PATIENT_SYSTEM}|{patient_id}")

    assert caught.value.reason == "fhir_multiple_matches"


def test_an_invalid_resource_is_quarantined_with_the_servers_diagnostics(
    fhir: FhirHttpStore,
) -> None:
    with pytest.raises(Quarantine) as caught:
        fhir.conditional_update(
            {"resourceType": "ImagingStudy", "status": "available"},
            "identifier=urn:dicom:uid|urn:oid:1.2.3.4.5.6.7.8.9",
        )

    assert caught.value.reason == "fhir_invalid"
    assert "subject" in caught.value.detail


def test_a_refused_connection_is_retried_later() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed

    with pytest.raises(RetryLater):
        FhirHttpStore(f"http://127.0.0.1:{port}/fhir", timeout=5).read("Patient", "x")


class _Busy(http.server.BaseHTTPRequestHandler):
    """A FHIR server under load: 503 with Retry-After, or 403 for /forbidden."""

    def do_GET(self) -> None:
        status = 403 if self.path.startswith("/forbidden") else 503
        self.send_response(status)
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def busy_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_busy_server_is_retried_after_what_it_says(busy_server: str) -> None:
    waits: list[float] = []
    store = FhirHttpStore(f"{busy_server}/fhir", attempts=3, sleep=waits.append)

    with pytest.raises(RetryLater) as caught:
        store.search("Patient", {})

    assert waits == [7, 7]
    assert caught.value.retry_after == 7


def test_a_wait_longer_than_max_wait_goes_back_to_the_bus(busy_server: str) -> None:
    waits: list[float] = []
    store = FhirHttpStore(f"{busy_server}/fhir", max_wait=5, sleep=waits.append)

    with pytest.raises(RetryLater) as caught:
        store.search("Patient", {})

    assert waits == []
    assert caught.value.retry_after == 7


def test_a_forbidden_answer_is_retried_long_after(busy_server: str) -> None:
    with pytest.raises(RetryLater) as caught:
        FhirHttpStore(f"{busy_server}/forbidden").read("Patient", "x")

    assert caught.value.retry_after == AUTH_RETRY_AFTER_SECONDS


# Events: duplicated, reordered, concurrent; If-Match races; tenants; restarts


def _settings(*tenants: TenantSettings) -> Settings:
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
        auth_audience="api://test",
        auth_jwks_url="",
        auth_local_public_key_path="",
        managed_identity_client_id="",
        tenants={tenant.name: tenant for tenant in tenants},
    )


def _event_body(
    ds: Dataset,
    tenant: TenantSettings,
    event_type: str = IMAGE_CREATED,
    *,
    seq: int = 1,
    at: str = "",
) -> JsonDict:
    return {
        "id": str(uuid.uuid4()),
        "eventType": event_type,
        "eventTime": at or datetime.now(UTC).isoformat(),
        "dataVersion": "1",
        "data": {
            "partitionName": tenant.partition_name,
            "imageStudyInstanceUid": ds.StudyInstanceUID,
            "imageSeriesInstanceUid": ds.SeriesInstanceUID,
            "imageSopInstanceUid": ds.SOPInstanceUID,
            "serviceHostName": tenant.dicom_service_host,
            "sequenceNumber": seq,
        },
    }


@pytest.fixture()
def state(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(str(tmp_path / "state.sqlite3"))


def _handle(
    body: JsonDict,
    tenant: TenantSettings,
    archive: QidoArchive,
    fhir: FhirHttpStore,
    state: SqliteStateStore,
) -> SyncOutcome | None:
    return handle_dicom_event(
        body,
        settings=_settings(tenant),
        archive_for=lambda name: archive,
        fhir_for=lambda name: fhir,
        state=state,
    )


def test_duplicated_and_reordered_events_give_the_archives_study(
    fhir: FhirHttpStore,
    tenant: TenantSettings,
    patient_id: str,
    state: SqliteStateStore,
) -> None:
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets[:2]))
    study_uid = datasets[0].StudyInstanceUID
    created = [_event_body(ds, tenant, seq=n) for n, ds in enumerate(datasets, 1)]
    # The MR instance is deleted again before any event is handled.
    deleted = _event_body(datasets[2], tenant, IMAGE_DELETED, seq=4)

    for body in (deleted, created[2], created[0], created[2], created[1], deleted):
        _handle(body, tenant, archive, fhir, state)

    (stored,) = _imaging_studies(fhir, study_uid)
    assert _fhir_uids(stored) == _archive_uids(archive, study_uid)
    assert (stored["numberOfSeries"], stored["numberOfInstances"]) == (1, 2)
    # One create; the later events found it current.
    assert stored["meta"]["versionId"] == "1"


def test_deleting_the_last_instance_of_a_series_removes_the_series(
    fhir: FhirHttpStore,
    tenant: TenantSettings,
    patient_id: str,
    state: SqliteStateStore,
) -> None:
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets))
    _handle(_event_body(datasets[0], tenant), tenant, archive, fhir, state)

    archive.datasets.remove(datasets[2])
    outcome = _handle(
        _event_body(datasets[2], tenant, IMAGE_DELETED, seq=2),
        tenant,
        archive,
        fhir,
        state,
    )

    (stored,) = _imaging_studies(fhir, datasets[0].StudyInstanceUID)
    assert outcome is not None and outcome.writes == 1
    assert [s["uid"] for s in stored["series"]] == [datasets[0].SeriesInstanceUID]
    assert [m["code"] for m in stored["modality"]] == ["CT"]
    assert stored["status"] == "available"


def test_events_older_than_the_last_sync_are_coalesced(
    fhir: FhirHttpStore,
    tenant: TenantSettings,
    patient_id: str,
    state: SqliteStateStore,
) -> None:
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets))
    long_ago = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()

    first = _handle(_event_body(datasets[0], tenant), tenant, archive, fhir, state)
    later = [
        _handle(_event_body(ds, tenant, at=long_ago), tenant, archive, fhir, state)
        for ds in datasets
    ]
    # An event raised after the sync started is not covered by it.
    fresh = _handle(_event_body(datasets[1], tenant), tenant, archive, fhir, state)

    assert first is not None and first.writes == 3
    assert later == [None, None, None]
    assert fresh is not None and fresh.writes == 0


def test_two_workers_on_the_same_queue_create_one_of_each(
    fhir: FhirHttpStore,
    tenant: TenantSettings,
    patient_id: str,
    state: SqliteStateStore,
) -> None:
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets))
    bodies = [_event_body(ds, tenant, seq=n) for n, ds in enumerate(datasets * 4)]
    errors: list[BaseException] = []

    def worker(share: list[JsonDict]) -> None:
        for body in share:
            try:
                _handle(body, tenant, archive, fhir, state)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(bodies[i::2],)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    study_uid = datasets[0].StudyInstanceUID
    (stored,) = _imaging_studies(fhir, study_uid)
    assert _fhir_uids(stored) == _archive_uids(archive, study_uid)
    patients = fhir.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|{patient_id}"})
    assert len(patients) == 1
    assert stored["meta"]["versionId"] == "1"


class _RacingFhir(FhirHttpStore):
    """A FHIR store where another writer updates the ImagingStudy just before our
    first update: our If-Match then names a version that is gone."""

    raced = False

    def update(self, resource: JsonDict, *, if_match: str) -> JsonDict:
        if resource["resourceType"] == "ImagingStudy" and not self.raced:
            self.raced = True
            current = self.read("ImagingStudy", resource["id"])
            assert current is not None
            FhirHttpStore.update(
                self, {**current, "description": "OTHER WRITER"}, if_match=if_match
            )
        return super().update(resource, if_match=if_match)


def test_a_lost_if_match_race_rebuilds_instead_of_overwriting(
    fhir_base_url: str, tenant: TenantSettings, patient_id: str
) -> None:
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets[:2]))
    racing = _RacingFhir(fhir_base_url)
    sync_study(_event(datasets[0]), tenant, archive, racing)

    archive.datasets.append(datasets[2])
    outcome = sync_study(_event(datasets[2], seq=2), tenant, archive, racing)

    (stored,) = _imaging_studies(racing, datasets[0].StudyInstanceUID)
    assert racing.raced
    # v1 ours, v2 the other writer, v3 ours rebuilt on top of it.
    assert stored["meta"]["versionId"] == "3"
    assert stored.get("description") != "OTHER WRITER"
    assert outcome.instance_count == 3
    assert _fhir_uids(stored) == _archive_uids(archive, datasets[0].StudyInstanceUID)


def test_two_tenants_on_one_fhir_service_never_share_a_patient(
    fhir: FhirHttpStore, tenant: TenantSettings, patient_id: str
) -> None:
    other = replace(tenant, name=f"{tenant.name}-b")
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets))

    mine = sync_study(_event(datasets[0]), tenant, archive, fhir)
    theirs = sync_study(_event(datasets[0]), other, archive, fhir)

    studies = {s["id"]: s for s in _imaging_studies(fhir, datasets[0].StudyInstanceUID)}
    patients = fhir.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|{patient_id}"})
    assert len(studies) == 2 and len(patients) == 2
    assert mine.imaging_study_id != theirs.imaging_study_id
    for outcome, name in ((mine, tenant.name), (theirs, other.name)):
        assert outcome.imaging_study_id is not None
        subject = studies[outcome.imaging_study_id]["subject"]["reference"]
        patient = fhir.read("Patient", subject.split("/")[1])
        assert patient is not None
        assert patient["meta"]["tag"][0]["code"] == name


# A FHIR server of our own, to stop and start


class PrivateFhirServer:
    """A sekmet-fhir on a free port with its data under ``directory``."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.config = directory / "settings.json"
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "keys").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "port": self.port,
                    "base_url": self.base_url,
                    "data_dir": str(directory / "data"),
                    "db_path": str(directory / "data" / "sekmet.db"),
                    "own_private_key_path": str(directory / "keys" / "key.pem"),
                    "facility_name": "test",
                    "log_inbound": False,
                    "simulator": {"enabled": False},
                    "validation": {"inbound": "strict"},
                    "server_auth": {"types": ["none"]},
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = Path(sys.executable).parent / "sekmet"
        self.process = subprocess.Popen(
            [str(binary), "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                if requests.get(f"{self.base_url}/metadata", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("the private FHIR server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture()
def private_fhir(tmp_path: Path) -> Iterator[PrivateFhirServer]:
    server = PrivateFhirServer(tmp_path / "fhir")
    server.start()
    yield server
    server.stop()


def test_a_fhir_server_restarted_mid_run_loses_nothing(
    private_fhir: PrivateFhirServer,
    tenant: TenantSettings,
    patient_id: str,
    state: SqliteStateStore,
) -> None:
    fhir = FhirHttpStore(private_fhir.base_url, attempts=2, sleep=lambda s: None)
    tenant = replace(tenant, fhir_base_url=private_fhir.base_url)
    datasets = _new_study(patient_id)
    archive = QidoArchive(list(datasets[:1]))
    _handle(_event_body(datasets[0], tenant), tenant, archive, fhir, state)

    private_fhir.stop()
    archive.datasets.extend(datasets[1:])
    failed = []
    for n, ds in enumerate(datasets[1:], 2):
        with pytest.raises(RetryLater):
            _handle(_event_body(ds, tenant, seq=n), tenant, archive, fhir, state)
        failed.append(_event_body(ds, tenant, seq=n))
    private_fhir.start()
    for body in failed:  # the bus delivers them again
        _handle(body, tenant, archive, fhir, state)

    study_uid = datasets[0].StudyInstanceUID
    (stored,) = _imaging_studies(fhir, study_uid)
    assert _fhir_uids(stored) == _archive_uids(archive, study_uid)
    assert (stored["numberOfSeries"], stored["numberOfInstances"]) == (2, 3)
