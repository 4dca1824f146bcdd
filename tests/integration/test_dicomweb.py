"""The DICOMweb adapter against a real Orthanc + DICOMweb plugin (the `stack` fixture).

Behaviours only AHDS shows (409 with FailureReason 45070, 503 with Retry-After) are
played by a loopback HTTP server that answers as AHDS documents it.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shared_code.adapters.dicomweb import AUTH_RETRY_AFTER_SECONDS, DicomWebArchive
from shared_code.errors import Quarantine, RetryLater


def fresh_instance(
    name: str = "CT_small.dcm", *, study: str = "", series: str = ""
) -> pydicom.Dataset:
    """A real test file under new UIDs, so runs against one server never collide."""
    path = get_testdata_file(name)
    assert path is not None
    dataset = pydicom.dcmread(path)
    dataset.StudyInstanceUID = study or generate_uid()
    dataset.SeriesInstanceUID = series or generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "TEST0001"
    return dataset


def part10(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def trust_a(stack: dict[str, Any]) -> dict[str, str]:
    return stack["tenants"]["trust-a"]


@pytest.fixture
def archive(trust_a: dict[str, str]) -> DicomWebArchive:
    return DicomWebArchive(
        trust_a["dicomweb_root"],
        username=trust_a["username"],
        password=trust_a["password"],
        page_size=2,
    )


def test_store_retrieve_round_trip_keeps_the_bytes(archive):
    dataset = fresh_instance()
    data = part10(dataset)

    outcome = archive.store_instance(data)
    held = archive.retrieve_instance(
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    )

    assert outcome.stored and not outcome.already_present
    assert sha(held) == sha(data)


def test_second_store_of_same_or_different_object_is_already_present(archive):
    dataset = fresh_instance()
    first = part10(dataset)
    archive.store_instance(first)
    dataset.InstanceNumber = 99
    different = part10(dataset)

    again = archive.store_instance(first)
    other = archive.store_instance(different)
    held = archive.retrieve_instance(
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    )

    assert again.already_present and not again.stored
    assert other.already_present and not other.stored
    # Orthanc (OverwriteInstances false) keeps its first copy.
    assert sha(held) == sha(first)


def test_without_precheck_orthanc_answers_200_to_a_duplicate(trust_a):
    archive = DicomWebArchive(
        trust_a["dicomweb_root"],
        username=trust_a["username"],
        password=trust_a["password"],
        precheck_existing=False,
    )
    dataset = fresh_instance()
    first = part10(dataset)
    archive.store_instance(first)
    dataset.InstanceNumber = 99

    other = archive.store_instance(part10(dataset))
    held = archive.retrieve_instance(
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    )

    # Why the pre-check exists: Orthanc says "stored" yet kept the first object.
    assert other.stored
    assert sha(held) == sha(first)


def test_qido_pages_through_a_study_and_returns_what_fhir_needs(archive):
    study, series = generate_uid(), generate_uid()
    sops = set()
    for name in (
        "CT_small.dcm",
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small.dcm",
        "CT_small.dcm",
    ):
        dataset = fresh_instance(name, study=study, series=series)
        archive.store_instance(part10(dataset))
        sops.add(dataset.SOPInstanceUID)

    studies = archive.search_studies(study)
    instances = archive.search_instances(study)
    in_series = archive.search_instances(study, series)
    series_found = archive.search_series(study)

    assert len(studies) == 1
    found = studies[0]
    assert found["0020000D"]["Value"] == [study]
    assert found["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
    assert found["00100020"]["Value"] == ["TEST0001"]
    assert found["00201208"]["Value"] == [5]  # NumberOfStudyRelatedInstances
    assert {i["00080018"]["Value"][0] for i in instances} == sops  # 3 pages of 2
    assert len(in_series) == 5
    assert [s["0020000E"]["Value"][0] for s in series_found] == [series]


def test_unknown_study_is_empty_and_unknown_instance_is_not_found(archive):
    assert archive.search_studies(generate_uid()) == []

    with pytest.raises(Quarantine) as caught:
        archive.retrieve_instance(generate_uid(), generate_uid(), generate_uid())

    assert caught.value.reason == "dicom_not_found"


def test_wrong_password_is_retried_later_not_quarantined(trust_a):
    # The data is fine and the credentials are an operator's to fix: retry, long after.
    archive = DicomWebArchive(
        trust_a["dicomweb_root"], username=trust_a["username"], password="wrong"
    )

    with pytest.raises(RetryLater) as caught:
        archive.search_studies()

    assert caught.value.retry_after == AUTH_RETRY_AFTER_SECONDS


def test_bytes_that_are_not_dicom_never_reach_the_archive(trust_a):
    archive = DicomWebArchive(
        trust_a["dicomweb_root"],
        username=trust_a["username"],
        password=trust_a["password"],
        precheck_existing=False,
    )
    with pytest.raises(Quarantine) as unreadable:
        archive.store_instance(b"not dicom" * 20)

    assert unreadable.value.reason == "dicom_unreadable"


def test_closed_port_is_retry_later():
    with pytest.raises(RetryLater):
        DicomWebArchive("http://127.0.0.1:9/dicom-web", timeout=5).search_studies()


# AHDS behaviour, played by a loopback server


def _failed_sop_body(sop_uid: str, reason: int) -> bytes:
    return json.dumps(
        {
            "00081198": {
                "vr": "SQ",
                "Value": [
                    {
                        "00081150": {
                            "vr": "UI",
                            "Value": ["1.2.840.10008.5.1.4.1.1.2"],
                        },
                        "00081155": {"vr": "UI", "Value": [sop_uid]},
                        "00081197": {"vr": "US", "Value": [reason]},
                    }
                ],
            }
        }
    ).encode()


@pytest.fixture
def ahds() -> Iterator[dict[str, Any]]:
    script: dict[str, Any] = {"status": 200, "body": b"{}", "headers": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            script["authorization"] = self.headers.get("Authorization")
            self.send_response(script["status"])
            self.send_header("Content-Type", "application/dicom+json")
            for name, value in script["headers"].items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(script["body"])))
            self.end_headers()
            self.wfile.write(script["body"])

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script["archive"] = DicomWebArchive(
        f"http://127.0.0.1:{server.server_port}/v2",
        token_provider=lambda: "token",
        precheck_existing=False,
    )
    yield script
    server.shutdown()
    server.server_close()


def test_ahds_409_45070_is_already_present(ahds):
    dataset = fresh_instance()
    ahds.update(status=409, body=_failed_sop_body(dataset.SOPInstanceUID, 45070))

    outcome = ahds["archive"].store_instance(part10(dataset))

    assert outcome.already_present and not outcome.stored
    assert ahds["authorization"] == "Bearer token"


def test_ahds_validation_failure_is_reported(ahds):
    dataset = fresh_instance()
    ahds.update(status=409, body=_failed_sop_body(dataset.SOPInstanceUID, 43264))

    outcome = ahds["archive"].store_instance(part10(dataset))

    assert (outcome.stored, outcome.failure_reason) == (False, 43264)


def test_ahds_503_is_retry_later_with_retry_after(ahds):
    ahds.update(status=503, body=b"", headers={"Retry-After": "7"})

    with pytest.raises(RetryLater) as caught:
        ahds["archive"].store_instance(part10(fresh_instance()))

    assert caught.value.retry_after == 7


def test_ahds_out_of_resources_is_retry_later(ahds):
    dataset = fresh_instance()
    ahds.update(status=409, body=_failed_sop_body(dataset.SOPInstanceUID, 42752))

    with pytest.raises(RetryLater):
        ahds["archive"].store_instance(part10(dataset))
