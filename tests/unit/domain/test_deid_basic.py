"""Basic Profile de-identification on real files with planted synthetic identifiers."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from shared_code.domain import ps315_table
from shared_code.domain.deid_basic import (
    check_no_leak,
    deidentify_basic,
    keyed_uid,
    pseudonym_patient_id,
    pseudonym_person_name,
)
from shared_code.domain.dicom_input import to_part10
from shared_code.errors import Quarantine

KEY = b"test-key-0123456789abcdef0123456789"
PLANTED = (b"DOE^JANE", b"TEST0001", b"ST ELSEWHERE TEST HOSPITAL", b"SMITH^JOHN")
ROOT = Path(__file__).resolve().parents[3]


def planted_dataset() -> Dataset:
    """CT_small with synthetic identifiers in nested sequences and private tags."""
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "TEST0001"
    dataset.InstitutionName = "St Elsewhere Test Hospital"
    dataset.ReferringPhysicianName = "SMITH^JOHN"
    dataset.OtherPatientIDs = "TEST0001"

    referenced = Dataset()
    referenced.ReferencedSOPClassUID = dataset.SOPClassUID
    referenced.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    referenced.PatientName = "DOE^JANE"  # misplaced on purpose: every level counts
    inner = Dataset()
    inner.InstitutionName = "St Elsewhere Test Hospital"
    inner.add_new(0x00291010, "LO", "TEST0001")  # private, two levels down
    referenced.ReferencedImageSequence = Sequence([inner])
    dataset.SourceImageSequence = Sequence([referenced])

    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = dataset.StudyInstanceUID
    dataset.ReferencedStudySequence = Sequence([study])

    request = Dataset()
    request.RequestedProcedureID = "TEST0001"
    request.StudyInstanceUID = dataset.StudyInstanceUID
    dataset.RequestAttributesSequence = Sequence([request])

    block = dataset.private_block(0x0011, "EXCHANGE TEST", create=True)
    block.add_new(0x01, "LO", "St Elsewhere Test Hospital")
    block.add_new(0x02, "PN", "DOE^JANE")
    return dataset


def deidentified_bytes() -> bytes:
    """What a separate process compares: the planted file, de-identified, written."""
    dataset = planted_dataset()
    deidentify_basic(dataset, KEY)
    return to_part10(dataset)


def _walk(dataset: Dataset):
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def test_planted_identifiers_do_not_survive() -> None:
    dataset = planted_dataset()
    original = copy.deepcopy(dataset)

    result = deidentify_basic(dataset, KEY)

    check_no_leak(original, dataset)
    written = to_part10(dataset).upper()
    for planted in PLANTED:
        assert planted not in written
    assert ("(0010,0010)", "Z") in result.actions
    assert ("(0008,2112)[0].(0010,0010)", "Z") in result.actions
    assert ("(0008,2112)[0].(0008,1140)[0].(0029,1010)", "X") in result.actions


def test_private_elements_are_removed_at_every_level() -> None:
    dataset = planted_dataset()

    deidentify_basic(dataset, KEY)

    assert not [e.tag for e in _walk(dataset) if e.tag.is_private]


def test_patient_id_and_names_become_keyed_pseudonyms() -> None:
    dataset = planted_dataset()

    deidentify_basic(dataset, KEY)

    assert dataset.PatientID == pseudonym_patient_id("TEST0001", KEY)
    assert len(dataset.PatientID) == 16
    assert dataset.PatientName == ""  # Z in the Basic Profile
    assert pseudonym_person_name("DOE^JANE", KEY).startswith("ANON^")
    assert "OtherPatientIDs" not in dataset


def test_uid_references_map_like_the_top_level_uids() -> None:
    dataset = planted_dataset()
    sop_uid, study_uid = dataset.SOPInstanceUID, dataset.StudyInstanceUID

    deidentify_basic(dataset, KEY)

    assert dataset.SOPInstanceUID == keyed_uid(sop_uid, KEY)
    assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert dataset.StudyInstanceUID == keyed_uid(study_uid, KEY)
    source = dataset.SourceImageSequence[0]  # X/Z/U*: kept, UIDs mapped
    assert source.ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert source.ReferencedSOPClassUID == dataset.SOPClassUID  # a class: kept
    assert dataset.ReferencedStudySequence == []  # X/Z: emptied
    assert "RequestAttributesSequence" not in dataset  # X


def test_keyed_uids_are_valid_and_depend_on_the_key() -> None:
    uid = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"

    mapped = keyed_uid(uid, KEY)

    assert mapped.startswith("2.25.")
    assert UID(mapped).is_valid
    assert mapped == keyed_uid(uid, KEY)
    assert mapped != keyed_uid(uid, b"another-key-0123456789abcdef012345")
    assert mapped != keyed_uid(uid + "1", KEY)


def test_de_identification_is_recorded_in_the_dataset() -> None:
    dataset = planted_dataset()

    deidentify_basic(dataset, KEY)

    assert dataset.PatientIdentityRemoved == "YES"
    assert ps315_table.EDITION in dataset.DeidentificationMethod
    [code] = dataset.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113100",
        "DCM",
        "Basic Application Confidentiality Profile",
    )
    assert dataset.LongitudinalTemporalInformationModified == "REMOVED"
    assert dataset.StudyDate == ""  # Z
    assert dataset.ContentDate == "19000101"  # Z/D: a dummy keeps Type 1 valid


def test_two_processes_write_identical_bytes() -> None:
    script = (
        "import runpy, sys\n"
        f"ns = runpy.run_path({str(Path(__file__))!r})\n"
        "sys.stdout.buffer.write(ns['deidentified_bytes']())\n"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            check=True,
            cwd=ROOT,
            env=env,
        )
        outputs.append(done.stdout)

    assert outputs[0] == outputs[1]
    assert outputs[0] == deidentified_bytes()
    assert len(outputs[0]) > 30_000


def test_check_no_leak_catches_a_planted_name() -> None:
    dataset = planted_dataset()
    original = copy.deepcopy(dataset)
    deidentify_basic(dataset, KEY)

    dataset.ManufacturerModelName = "Scanner of Doe^Jane"

    with pytest.raises(Quarantine) as raised:
        check_no_leak(original, dataset)
    assert raised.value.reason == "deid_leak"
    assert raised.value.detail.startswith("(0008,1090) holds the value of")
    assert "DOE" not in raised.value.detail.upper()


def test_check_no_leak_catches_an_original_uid_in_a_nested_item() -> None:
    dataset = planted_dataset()
    original = copy.deepcopy(dataset)
    deidentify_basic(dataset, KEY)

    item = Dataset()
    item.ReferencedSOPInstanceUID = original.SOPInstanceUID
    dataset.ReferencedImageSequence = Sequence([item])

    with pytest.raises(Quarantine, match=r"\(0008,1140\)\[0\]\.\(0008,1155\)"):
        check_no_leak(original, dataset)


def test_check_no_leak_catches_a_patient_id_in_raw_un_bytes() -> None:
    dataset = planted_dataset()
    original = copy.deepcopy(dataset)
    deidentify_basic(dataset, KEY)

    dataset.add_new(0x00181030, "UN", b"PROTOCOL TEST0001 ")

    with pytest.raises(Quarantine, match="deid_leak"):
        check_no_leak(original, dataset)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        deidentify_basic(planted_dataset(), b"")


COMMON = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "rtstruct.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "JPEG2000.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "US1_UNCR.dcm",
    "eCT_Supplemental.dcm",
    "SC_rgb.dcm",
]


@pytest.mark.parametrize("name", COMMON)
def test_common_files_pass_the_leak_check_and_stay_writable(name: str) -> None:
    dataset = pydicom.dcmread(str(get_testdata_file(name)), force=True)
    original = copy.deepcopy(dataset)

    deidentify_basic(dataset, KEY)

    check_no_leak(original, dataset)
    if "TransferSyntaxUID" in getattr(dataset, "file_meta", {}):
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        again = pydicom.dcmread(io.BytesIO(to_part10(dataset)))
        assert again.PatientIdentityRemoved == "YES"


def test_the_pydicom_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    """Every readable test file of pydicom and pydicom-data; the counts are a report."""
    outcomes: Counter[str] = Counter()
    failures = []
    for path in get_testdata_files():
        if not os.path.isfile(path) or "DICOMDIR" in path:
            continue  # DICOMDIRs are skipped at upload; they are not instances
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = pydicom.dcmread(path)
            except Exception:  # not DICOM at all (JSON, dumps, READMEs)
                outcomes["unreadable"] += 1
                continue
            original = copy.deepcopy(dataset)
            try:
                deidentify_basic(dataset, KEY)
                check_no_leak(original, dataset)
            except Quarantine as exc:
                outcomes["fail"] += 1
                failures.append(f"{Path(path).name}: {exc.detail}")
            except Exception as exc:
                outcomes["error"] += 1
                failures.append(f"{Path(path).name}: {exc!r}")
            else:
                outcomes["pass"] += 1

    with capsys.disabled():
        print(f"\npydicom corpus through deidentify_basic: {dict(outcomes)}")
        for failure in failures:
            print(f"  {failure}")
    assert outcomes["pass"] >= 200
    assert outcomes["error"] == 0, failures
