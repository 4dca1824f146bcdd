"""The engine and the leak gate on planted synthetic identifiers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from shared_code.domain import deid
from shared_code.domain.deid import policy as options
from shared_code.domain.dicom_input import to_part10
from shared_code.errors import Quarantine
from tests.unit.domain.deid.planted import KEY, PLANTED, planted_dataset

ROOT = Path(__file__).resolve().parents[4]
ALL_CLEAN = frozenset(
    {
        options.CLEAN_DESCRIPTORS,
        options.CLEAN_STRUCTURED_CONTENT,
        options.CLEAN_GRAPHICS,
        options.RETAIN_LONGITUDINAL_MODIFIED_DATES,
    }
)


def run(policy: deid.DeidPolicy | None = None) -> tuple[Dataset, deid.DeidReport]:
    """Planted dataset through needles, engine and gate, as the pipeline runs them."""
    policy = policy or deid.DeidPolicy()
    dataset = planted_dataset()
    needles = deid.collect_needles(dataset, policy)
    report = deid.deidentify(dataset, KEY, policy)
    deid.check_no_leak(needles, dataset)
    return dataset, report


def walk(dataset: Dataset):
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)


def deidentified_uids() -> str:
    """What a separate process prints: the UIDs of the de-identified planted file."""
    dataset, _ = run()
    uids = [str(e.value) for e in walk(dataset) if e.VR == "UI"]
    return "\n".join([*uids, dataset.file_meta.MediaStorageSOPInstanceUID])


@pytest.mark.parametrize(
    "policy",
    [deid.DeidPolicy(), deid.DeidPolicy(options=ALL_CLEAN)],
    ids=["basic", "clean-options"],
)
def test_planted_identifiers_do_not_survive(policy: deid.DeidPolicy) -> None:
    dataset, _ = run(policy)

    written = to_part10(dataset).upper()
    for planted in PLANTED:
        assert planted not in written
    assert b"SMITH" not in written and b"ELSEWHERE" not in written


def test_no_private_element_survives_at_any_level() -> None:
    dataset, report = run()

    assert not [e.tag for e in walk(dataset) if e.tag.is_private]
    private_sequences = [p for p, rule, _ in report.entries if p.startswith("(0011,1")]
    assert private_sequences and all(
        rule == "private" for p, rule, _ in report.entries if p in private_sequences
    )


def test_safe_private_keeps_only_the_allowed_element() -> None:
    policy = deid.DeidPolicy(
        options=frozenset({options.RETAIN_SAFE_PRIVATE}),
        safe_private=deid.parse_safe_private(["EXCHANGE TEST:01"]),
    )
    dataset = planted_dataset()
    dataset.private_block(0x0011, "EXCHANGE TEST").add_new(0x01, "LO", "LAYOUT 3")

    deid.deidentify(dataset, KEY, policy)

    private = {e.tag: e.value for e in dataset if e.tag.is_private}
    assert set(private) == {0x00110011, 0x00111101}  # CT_small holds (0011,0010)


def test_uid_references_map_like_the_uids_they_reference() -> None:
    dataset = planted_dataset()
    sop_uid, study_uid = dataset.SOPInstanceUID, dataset.StudyInstanceUID

    deid.deidentify(dataset, KEY)

    assert dataset.SOPInstanceUID == deid.keyed_uid(sop_uid, KEY)
    assert dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID
    assert dataset.StudyInstanceUID == deid.keyed_uid(study_uid, KEY)
    source = dataset.SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == dataset.SOPInstanceUID
    assert source.ReferencedSOPClassUID == dataset.SOPClassUID  # a class: kept
    assert UID(dataset.SOPInstanceUID).is_valid


def test_keyed_uid_keeps_the_first_cut_mapping() -> None:
    # localdev's demo predicts research UIDs with this function: same result.
    expected = "2.25.170424520009274569214369906430304639640"
    assert deid.keyed_uid("1.2.3.4", b"k" * 32) == expected


def test_uids_are_identical_in_two_processes() -> None:
    script = (
        "import runpy, sys\n"
        f"ns = runpy.run_path({str(Path(__file__))!r})\n"
        "print(ns['deidentified_uids']())\n"
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
    assert outputs[0].decode().strip() == deidentified_uids()
    assert outputs[0].count(b"2.25.") >= 5


def test_patient_pseudonyms_and_date_shift_are_stable_per_patient() -> None:
    modified = deid.DeidPolicy(
        options=frozenset({options.RETAIN_LONGITUDINAL_MODIFIED_DATES})
    )
    first, _ = run(modified)
    second, _ = run(modified)
    other = planted_dataset()
    other.PatientName = "DOE^J"  # another spelling, same Patient ID
    deid.deidentify(other, KEY, modified)

    assert first.PatientID == deid.patient_id_pseudonym("TEST0001", KEY)
    assert first.PatientName == other.PatientName == second.PatientName
    assert first.PatientName == deid.patient_name_pseudonym("TEST0001", KEY)
    assert first.StudyDate == second.StudyDate == other.StudyDate
    assert first.StudyDate != planted_dataset().StudyDate
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"


def test_multi_group_names_become_one_ascii_pseudonym_each() -> None:
    dataset = planted_dataset()
    dataset.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    dataset.PerformingPhysicianName = [
        "Yamada^Tarou=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
        "DOE^JANE",
    ]
    dataset.add_new(0x00081050, "PN", dataset.PerformingPhysicianName)
    policy = deid.DeidPolicy(options=frozenset({options.CLEAN_DESCRIPTORS}))
    needles = deid.collect_needles(dataset, policy)

    deid.deidentify(dataset, KEY, policy)
    deid.check_no_leak(needles, dataset)

    again = pydicom.dcmread(__import__("io").BytesIO(to_part10(dataset)))
    assert again.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert "PerformingPhysicianName" not in again  # X in the Basic Profile
    assert str(again.PatientName).isascii()


def test_clean_options_keep_structure_and_cut_identifiers() -> None:
    dataset, report = run(deid.DeidPolicy(options=ALL_CLEAN))

    text, person = dataset.ContentSequence
    assert "TEST0001" not in text.TextValue and "[REMOVED]" in text.TextValue
    assert str(person.PersonName).startswith("ANON^")
    label = dataset.GraphicAnnotationSequence[0].TextObjectSequence[0]
    assert "DOE" not in label.UnformattedTextValue
    assert dataset.StudyDescription == "CT of [REMOVED]"
    assert ("(0040,A730)", "113104", "C") in report.entries
    codes = [c.CodeValue for c in dataset.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113103", "113104", "113105", "113107"]


def test_basic_profile_records_what_was_done() -> None:
    dataset, report = run()

    assert dataset.PatientIdentityRemoved == "YES"
    assert deid.EDITION in dataset.DeidentificationMethod
    [code] = dataset.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert dataset.LongitudinalTemporalInformationModified == "REMOVED"
    assert dataset.ContentSequence == []  # D: emptied without Clean Structured Content
    assert not [e for e in dataset if e.tag.group == 0x6000]
    assert ("(0010,0010)", "E.1-1", "D") in report.entries


def test_report_holds_paths_and_rules_never_values() -> None:
    _, report = run(deid.DeidPolicy(options=ALL_CLEAN))

    text = repr(report.as_dict()).upper()
    for planted in PLANTED:
        assert planted.decode() not in text


def test_retain_uids_keeps_every_uid() -> None:
    dataset = planted_dataset()
    sop_uid = dataset.SOPInstanceUID
    policy = deid.DeidPolicy(options=frozenset({options.RETAIN_UIDS}))

    deid.deidentify(dataset, KEY, policy)

    assert dataset.SOPInstanceUID == sop_uid
    assert dataset.file_meta.MediaStorageSOPInstanceUID == sop_uid


@pytest.mark.parametrize(
    ("modality", "burned_in", "risky"),
    [("US", None, True), ("CT", "YES", True), ("US", "NO", False), ("CT", None, False)],
)
def test_burned_in_text_is_quarantined_or_flagged(
    modality: str, burned_in: str | None, risky: bool
) -> None:
    dataset = planted_dataset()
    dataset.Modality = modality
    del dataset.BurnedInAnnotation
    if burned_in:
        dataset.BurnedInAnnotation = burned_in

    if risky:
        with pytest.raises(Quarantine, match="deid_burned_in"):
            deid.deidentify(dataset, KEY)
    flagged = deid.deidentify(dataset, KEY, deid.DeidPolicy(burned_in="flag"))

    assert flagged.burned_in_risk is risky
    method = dataset.DeidentificationMethod
    assert ("BURNED-IN" in str(method)) is risky


def test_gate_catches_a_planted_name_the_engine_missed() -> None:
    dataset = planted_dataset()
    needles = deid.collect_needles(dataset, deid.DeidPolicy())
    deid.deidentify(dataset, KEY)

    dataset.ManufacturerModelName = "Scanner of Doe^Jane"

    with pytest.raises(Quarantine) as raised:
        deid.check_no_leak(needles, dataset)
    assert raised.value.reason == "deid_leak"
    assert raised.value.detail.startswith("(0008,1090) holds the value of")
    assert "DOE" not in raised.value.detail.upper()


def test_gate_catches_an_original_uid_in_a_nested_item() -> None:
    dataset = planted_dataset()
    sop_uid = dataset.SOPInstanceUID
    needles = deid.collect_needles(dataset, deid.DeidPolicy())
    deid.deidentify(dataset, KEY)

    item = Dataset()
    item.ReferencedSOPInstanceUID = sop_uid
    dataset.ReferencedImageSequence = Sequence([item])

    with pytest.raises(Quarantine, match=r"\(0008,1140\)\[0\]\.\(0008,1155\)"):
        deid.check_no_leak(needles, dataset)


def test_gate_catches_an_id_in_raw_un_bytes_of_a_private_element() -> None:
    dataset = planted_dataset()
    needles = deid.collect_needles(dataset, deid.DeidPolicy())
    deid.deidentify(dataset, KEY)

    dataset.add_new(0x00431030, "UN", b"PROTOCOL TEST0001 ")

    with pytest.raises(Quarantine, match="deid_leak"):
        deid.check_no_leak(needles, dataset)


def test_gate_does_not_trust_an_engine_that_does_nothing() -> None:
    dataset = planted_dataset()
    needles = deid.collect_needles(dataset, deid.DeidPolicy())

    with pytest.raises(Quarantine, match="deid_leak"):
        deid.check_no_leak(needles, dataset)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        deid.deidentify(planted_dataset(), b"")


def test_policy_reads_codes_and_meanings_and_refuses_clashes() -> None:
    parsed = deid.parse_options(["113110", "Retain Device Identity Option", "113100"])

    assert parsed == {"113110", "113109"}
    with pytest.raises(deid.PolicyError):
        deid.parse_options(["Retain Everything"])
    with pytest.raises(deid.PolicyError):
        deid.build_policy(["113106", "113107"], [], "quarantine")
    with pytest.raises(deid.PolicyError):
        deid.parse_safe_private(["no element"])


def test_gate_catches_a_leak_in_a_deflated_file() -> None:
    # Deflated Explicit VR Little Endian: written out, the values are compressed,
    # so the gate must look at them before compression.
    dataset = pydicom.dcmread(str(get_testdata_file("image_dfl.dcm")))
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "TEST0001"
    policy = deid.DeidPolicy(burned_in="flag")  # an OT image: may hold burned-in text
    needles = deid.collect_needles(dataset, policy)
    deid.deidentify(dataset, KEY, policy)

    dataset.ManufacturerModelName = "Scanner of Doe^Jane"

    with pytest.raises(Quarantine, match="deid_leak"):
        deid.check_no_leak(needles, dataset)
