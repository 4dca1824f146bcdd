"""Reconciliation against the real local Orthanc (trust-a) and a private sekmet-fhir.

The FHIR server is our own, on a free port: walking trust-a's change feed also
meets other tests' studies, and their ImagingStudies must not appear in the
stack's FHIR service under a tenant name of ours.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset

from shared_code.adapters.dicomweb import DicomWebArchive
from shared_code.adapters.fhir_http import FhirHttpStore
from shared_code.adapters.state_sqlite import SqliteStateStore
from shared_code.config import TenantSettings
from shared_code.errors import RetryLater
from shared_code.services.reconcile import CHECKPOINTS, reconcile_tenant
from tests.integration.test_fhir_sync import PrivateFhirServer, _new_study

PATIENT_SYSTEM = "https://fhir.nhs.uk/Id/local-patient-identifier"


@pytest.fixture()
def archive(stack: dict[str, Any]) -> DicomWebArchive:
    spec = stack["tenants"]["trust-a"]
    return DicomWebArchive(
        spec["dicomweb_root"], username=spec["username"], password=spec["password"]
    )


@pytest.fixture()
def private_fhir(tmp_path: Path) -> Iterator[PrivateFhirServer]:
    server = PrivateFhirServer(tmp_path / "fhir")
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def state(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(str(tmp_path / "state.sqlite3"))


def _tenant(stack: dict[str, Any], fhir_base_url: str) -> TenantSettings:
    return TenantSettings(
        name=f"trust-a-{uuid.uuid4().hex[:8]}",
        dicomweb_root=stack["tenants"]["trust-a"]["dicomweb_root"],
        fhir_base_url=fhir_base_url,
        policy="clinical",
        dicom_service_host="127.0.0.1:18042",
        fhir_auth="none",
        patient_identifier_system=PATIENT_SYSTEM,
    )


def _start_at_the_end(
    stack: dict[str, Any], state: SqliteStateStore, tenant: TenantSettings
) -> None:
    """Checkpoint the feed where it is now, so the walk meets our studies only
    (and those other tests store meanwhile)."""
    spec = stack["tenants"]["trust-a"]
    last = requests.get(
        f"{spec['orthanc_url']}/changes",
        params={"last": ""},
        auth=(spec["username"], spec["password"]),
        timeout=10,
    ).json()["Last"]
    state.upsert(
        CHECKPOINTS,
        {
            "id": f"change-feed:{tenant.name}",
            "pk": tenant.name,
            "checkpoint": {"since": last},
        },
    )


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fhir_view(fhir: FhirHttpStore, study_uid: str) -> dict[str, set[str]]:
    (study,) = fhir.search(
        "ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    )
    return {
        series["uid"]: {instance["uid"] for instance in series["instance"]}
        for series in study.get("series", [])
    }


def _archive_view(archive: DicomWebArchive, study_uid: str) -> dict[str, set[str]]:
    view: dict[str, set[str]] = {}
    for instance in archive.search_instances(study_uid):
        series_uid = instance["0020000E"]["Value"][0]
        view.setdefault(series_uid, set()).add(instance["00080018"]["Value"][0])
    return view


def test_reconciliation_heals_studies_no_event_announced(
    stack: dict[str, Any],
    archive: DicomWebArchive,
    private_fhir: PrivateFhirServer,
    state: SqliteStateStore,
) -> None:
    fhir = FhirHttpStore(private_fhir.base_url)
    tenant = _tenant(stack, private_fhir.base_url)
    _start_at_the_end(stack, state, tenant)
    datasets = _new_study(f"TEST{uuid.uuid4().hex[:8].upper()}")
    for ds in datasets:
        assert archive.store_instance(_part10(ds)).stored

    first = reconcile_tenant(tenant, archive, archive, fhir, state)
    again = reconcile_tenant(tenant, archive, archive, fhir, state)

    study_uid = datasets[0].StudyInstanceUID
    assert first.done and first.studies >= 1 and first.quarantined == 0
    assert _fhir_view(fhir, study_uid) == _archive_view(archive, study_uid)
    assert len(_archive_view(archive, study_uid)) == 2
    # The checkpoint moved: the second walk did not meet the study again, or
    # found it current when Orthanc logged it stable meanwhile.
    assert again.writes == 0


def test_a_fhir_outage_stops_the_walk_without_moving_the_checkpoint(
    stack: dict[str, Any],
    archive: DicomWebArchive,
    private_fhir: PrivateFhirServer,
    state: SqliteStateStore,
) -> None:
    fhir = FhirHttpStore(private_fhir.base_url, attempts=1)
    tenant = _tenant(stack, private_fhir.base_url)
    _start_at_the_end(stack, state, tenant)
    before = state.get(CHECKPOINTS, tenant.name, f"change-feed:{tenant.name}")
    datasets = _new_study(f"TEST{uuid.uuid4().hex[:8].upper()}")
    for ds in datasets:
        archive.store_instance(_part10(ds))

    private_fhir.stop()
    with pytest.raises(RetryLater):
        reconcile_tenant(tenant, archive, archive, fhir, state)
    after = state.get(CHECKPOINTS, tenant.name, f"change-feed:{tenant.name}")
    private_fhir.start()
    healed = reconcile_tenant(tenant, archive, archive, fhir, state)

    assert before is not None and after is not None
    assert after["checkpoint"] == before["checkpoint"]
    assert healed.done
    study_uid = datasets[0].StudyInstanceUID
    assert _fhir_view(fhir, study_uid) == _archive_view(archive, study_uid)
