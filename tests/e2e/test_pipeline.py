"""End to end: real DICOM through function_app.py on the local stack of real servers.

Given the demo's uploads, when the local host has run the pipeline, then the archives,
the FHIR servers, the quarantine and the share records say exactly what they must.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from localdev.scenario import Expected, Stack, Upload, wait_until
from tests.e2e.conftest import PIPELINE_TIMEOUT, HostProcess, wait_idle

pytestmark = pytest.mark.e2e


def _imaging_study(stack: Stack, tenant: str, study_uid: str) -> dict[str, Any] | None:
    found = stack.fhir_search(
        tenant, "ImagingStudy", identifier=f"urn:dicom:uid|urn:oid:{study_uid}"
    )
    assert len(found) <= 1, f"{len(found)} ImagingStudy resources for one study"
    return found[0] if found else None


def _fhir_series(resource: dict[str, Any]) -> dict[str, set[str]]:
    return {
        s["uid"]: {i["uid"] for i in s.get("instance", [])}
        for s in resource.get("series", [])
    }


def _wait_for_imaging_study(
    stack: Stack, tenant: str, study_uid: str, series: dict[str, set[str]]
) -> dict[str, Any]:
    def matches() -> bool:
        resource = _imaging_study(stack, tenant, study_uid)
        return resource is not None and _fhir_series(resource) == series

    assert wait_until(matches, timeout=PIPELINE_TIMEOUT, interval=1)
    resource = _imaging_study(stack, tenant, study_uid)
    assert resource is not None
    return resource


def _multi_series_study(expected: Expected) -> str:
    studies = expected.studies["trust-a"]
    return max(
        (uid for uid, series in studies.items() if len(series) > 1),
        key=lambda uid: (sum(len(s) for s in studies[uid].values()), uid),
    )


def test_archive_holds_exactly_the_good_instances(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    _, expected = scenario
    stored = local_stack.stored_instances("trust-a")

    for study_uid, series in expected.studies["trust-a"].items():
        assert stored.get(study_uid) == series, f"study …{study_uid[-12:]}"


def test_bad_uploads_are_quarantined_with_reasons(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    uploads, _ = scenario
    reasons = local_stack.quarantined()

    for upload in (u for u in uploads if u.expect == "quarantined"):
        source = f"uploads/{upload.tenant}/{upload.name}"
        mine = [r for r in reasons if r["source"].startswith(source)]
        assert mine, f"{source} has no quarantine reason"
        assert all(r["reason"] and r["detail"] for r in mine)

    by_source = {r["source"].split("#")[0]: r["reason"] for r in reasons}
    assert by_source["uploads/no-such-trust/CT_small.dcm"] == "unknown_tenant"
    assert by_source["uploads/trust-a/hostile.zip"] == "zip_unsafe_path"


def test_nothing_is_dead_lettered(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    assert local_stack.dead_letters() == {
        "instances": 0,
        "dicom-events": 0,
        "shares": 0,
    }


def test_imaging_study_matches_the_archive(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    _, expected = scenario
    study_uid = _multi_series_study(expected)
    series = expected.studies["trust-a"][study_uid]

    resource = _wait_for_imaging_study(local_stack, "trust-a", study_uid, series)

    assert resource["status"] == "available"
    assert resource["numberOfSeries"] == len(series)
    assert resource["numberOfInstances"] == sum(len(s) for s in series.values())
    patient = resource["subject"]["reference"]
    assert patient.startswith("Patient/")


def test_research_copy_is_deidentified(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    _, expected = scenario
    original = expected.instances["research"]
    research = local_stack.qido("research", "instances", includefield="00100010")

    assert len(research) >= len(original)
    stored_uids = {i["00080018"]["Value"][0] for i in research}
    assert not stored_uids & original, "an original SOP Instance UID reached research"


def test_share_copies_a_study_to_a_second_tenant(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    _, expected = scenario
    study_uid = _multi_series_study(expected)
    token = local_stack.token(["trust-a"])

    created = local_stack.api(
        "POST",
        "shares",
        token,
        json={"study_uid": study_uid, "from_tenant": "trust-a", "to_tenant": "trust-b"},
    )
    assert created.status_code == 202, created.text
    share_id = created.json()["id"]

    def complete() -> bool:
        status = local_stack.api("GET", f"shares/{share_id}", token).json()["status"]
        return status in ("COMPLETE", "FAILED")

    assert wait_until(complete, timeout=PIPELINE_TIMEOUT, interval=1)
    share = local_stack.api("GET", f"shares/{share_id}", token).json()
    series = expected.studies["trust-a"][study_uid]
    assert share["status"] == "COMPLETE"
    assert local_stack.stored_instances("trust-b")[study_uid] == series
    _wait_for_imaging_study(local_stack, "trust-b", study_uid, series)


def test_api_requires_a_token_and_keeps_tenants_apart(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    _, expected = scenario
    study_uid = _multi_series_study(expected)
    trust_a = local_stack.token(["trust-a"])
    research = local_stack.token(["research"])

    anonymous = local_stack.http.get(
        f"http://127.0.0.1:7071/api/studies/{study_uid}", timeout=10
    )
    own = local_stack.api("GET", f"studies/{study_uid}", trust_a)
    other = local_stack.api("GET", "studies/" + study_uid, research)
    share_as_other = local_stack.api(
        "POST",
        "shares",
        research,
        json={
            "study_uid": study_uid,
            "from_tenant": "trust-a",
            "to_tenant": "research",
        },
    )
    expired = local_stack.api(
        "GET",
        f"studies/{study_uid}",
        local_stack.token(["trust-a"], lifetime_seconds=-3600),
    )

    assert anonymous.status_code == 401
    assert own.status_code == 200
    assert own.json()["archive"]["instances_stored"] == sum(
        len(s) for s in expected.studies["trust-a"][study_uid].values()
    )
    assert other.status_code == 404
    assert share_as_other.status_code == 403
    assert expired.status_code == 401


def test_uploading_the_same_files_again_changes_nothing(
    local_stack: Stack, scenario: tuple[list[Upload], Expected]
) -> None:
    uploads, expected = scenario
    study_uid = _multi_series_study(expected)
    before_archive = local_stack.stored_instances("trust-a")
    before_fhir = _imaging_study(local_stack, "trust-a", study_uid)
    before_quarantine = len(local_stack.quarantined())

    for upload in uploads:
        local_stack.upload(upload)
    wait_idle(local_stack)

    assert local_stack.stored_instances("trust-a") == before_archive
    after_fhir = _imaging_study(local_stack, "trust-a", study_uid)
    assert before_fhir is not None and after_fhir is not None
    assert after_fhir["id"] == before_fhir["id"]
    assert _fhir_series(after_fhir) == _fhir_series(before_fhir)
    assert len(local_stack.quarantined()) == before_quarantine
    assert local_stack.dead_letters() == {
        "instances": 0,
        "dicom-events": 0,
        "shares": 0,
    }


def _synthetic_study(count: int) -> tuple[str, list[Upload]]:
    """``count`` new instances of one synthetic study, built from CT_small."""
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study_uid, series_uid = generate_uid(), generate_uid()
    uploads = []
    for number in range(1, count + 1):
        ds = template.copy()
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "TEST0001"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        uploads.append(
            Upload("trust-a", f"restart/{number:03}.dcm", buffer.getvalue(), "stored")
        )
    return study_uid, uploads


def test_a_host_killed_mid_run_loses_and_duplicates_nothing(
    local_stack: Stack, host: HostProcess, scenario: tuple[list[Upload], Expected]
) -> None:
    study_uid, uploads = _synthetic_study(40)
    sops = {
        pydicom.dcmread(io.BytesIO(u.data), stop_before_pixels=True).SOPInstanceUID
        for u in uploads
    }

    for upload in uploads:
        local_stack.upload(upload)
    # Kill the host as soon as the first instances reach the archive.
    assert wait_until(
        lambda: bool(local_stack.stored_instances("trust-a").get(study_uid)),
        timeout=PIPELINE_TIMEOUT,
        interval=0.2,
    )
    host.kill()
    host.start()
    wait_idle(local_stack)

    stored = local_stack.stored_instances("trust-a")[study_uid]
    assert set().union(*stored.values()) == sops
    instances = local_stack.qido("trust-a", f"studies/{study_uid}/instances")
    assert len(instances) == len(sops)
    resource = _wait_for_imaging_study(local_stack, "trust-a", study_uid, stored)
    assert resource["numberOfInstances"] == len(sops)
