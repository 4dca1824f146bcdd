"""Uploads and instances: real pydicom test files, zips built here, hostile archives."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement

from shared_code.config import Limits
from shared_code.domain.dicom_input import (
    MemberRejected,
    MemberSkipped,
    ParsedInstance,
    UploadMember,
    iter_upload,
    parse_instance,
    to_part10,
)
from shared_code.errors import NotSupported, Quarantine

LIMITS = Limits()


def _path(name: str) -> str:
    return str(get_testdata_file(name))


def _file(name: str) -> bytes:
    return Path(_path(name)).read_bytes()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _upload(
    name: str, data: bytes, limits: Limits = LIMITS
) -> list[UploadMember | MemberSkipped | MemberRejected]:
    return list(iter_upload(name, io.BytesIO(data), len(data), limits))


def _quarantine_reason(name: str, data: bytes, limits: Limits = LIMITS) -> str:
    with pytest.raises(Quarantine) as raised:
        _upload(name, data, limits)
    return raised.value.reason


# --- iter_upload: single files ---------------------------------------------------


@pytest.mark.parametrize("name", ["scan.dcm", "IM0001", "folder/scan.bin"])
def test_single_dicom_file_is_one_member_named_by_its_file_name(name: str) -> None:
    data = _file("CT_small.dcm")

    members = _upload(name, data)

    assert members == [UploadMember(name.rsplit("/", 1)[-1], data)]


def test_text_upload_is_neither_dicom_nor_zip() -> None:
    assert _quarantine_reason("notes.dcm", b"hello " * 100) == "unsupported_upload"


def test_upload_beyond_max_upload_bytes_is_quarantined() -> None:
    data = _file("CT_small.dcm")
    limits = Limits(max_upload_bytes=len(data) - 1)

    assert _quarantine_reason("scan.dcm", data, limits) == "upload_too_large"


def test_declared_size_beyond_the_limit_is_quarantined_too() -> None:
    data = _file("CT_small.dcm")

    with pytest.raises(Quarantine, match="upload_too_large"):
        list(iter_upload("scan.dcm", io.BytesIO(data), 10**12, LIMITS))


def test_single_file_beyond_max_instance_bytes_is_a_rejected_member() -> None:
    data = _file("CT_small.dcm")
    limits = Limits(max_instance_bytes=1000)

    [member] = _upload("scan.dcm", data, limits)

    assert isinstance(member, MemberRejected)
    assert member.error.reason == "instance_too_large"


# --- iter_upload: zips -----------------------------------------------------------


def test_zip_yields_members_in_nested_folders_and_skips_non_content() -> None:
    ct, mr = _file("CT_small.dcm"), _file("MR_small.dcm")
    upload = _zip(
        {
            "study/": b"",
            "study/series1/IM1.dcm": ct,
            "study/series2/IM2": mr,
            "study/DICOMDIR": _file("DICOMDIR"),
            "__MACOSX/study/._IM1.dcm": b"\x00\x05\x16\x07",
            "study/.DS_Store": b"Bud1",
            "study/README.txt": b"these are test images",
        }
    )

    members = _upload("upload.zip", upload)

    assert UploadMember("study/series1/IM1.dcm", ct) in members
    assert UploadMember("study/series2/IM2", mr) in members
    skipped = {m.name: m.reason for m in members if isinstance(m, MemberSkipped)}
    assert skipped == {
        "study/": "directory",
        "study/DICOMDIR": "dicomdir",
        "__MACOSX/study/._IM1.dcm": "macos_metadata",
        "study/.DS_Store": "macos_metadata",
    }
    [rejected] = [m for m in members if isinstance(m, MemberRejected)]
    assert rejected.name == "study/README.txt"
    assert rejected.error.reason == "not_dicom"


@pytest.mark.parametrize(
    "name", ["DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-empty.dcm"]
)
def test_a_dicomdir_under_another_name_is_skipped_by_its_sop_class(name: str) -> None:
    upload = _zip({"disc/catalogue": _file(name), "disc/IM1": _file("CT_small.dcm")})

    members = _upload("disc.zip", upload)

    skipped = {m.name: m.reason for m in members if isinstance(m, MemberSkipped)}
    assert skipped == {"disc/catalogue": "dicomdir"}
    assert [m.name for m in members if isinstance(m, UploadMember)] == ["disc/IM1"]


def test_zip_is_detected_by_its_signature_not_its_name() -> None:
    upload = _zip({"a.dcm": _file("CT_small.dcm")})

    members = _upload("upload.bin", upload)

    assert [m.name for m in members] == ["a.dcm"]


def test_zip_members_are_read_lazily_one_at_a_time() -> None:
    upload = _zip({"a.dcm": _file("CT_small.dcm"), "b.dcm": b"not dicom"})

    members = iter_upload("u.zip", io.BytesIO(upload), len(upload), LIMITS)

    assert isinstance(next(members), UploadMember)
    assert isinstance(next(members), MemberRejected)


def test_zip_member_beyond_max_instance_bytes_is_rejected_alone() -> None:
    ct, small = _file("CT_small.dcm"), _file("rtplan.dcm")
    limits = Limits(max_instance_bytes=len(ct) - 1)
    upload = _zip({"big.dcm": ct, "small.dcm": small})

    members = _upload("u.zip", upload, limits)

    assert isinstance(members[0], MemberRejected)
    assert members[0].error.reason == "instance_too_large"
    assert members[1] == UploadMember("small.dcm", small)


@pytest.mark.parametrize(
    "name",
    ["../../evil.dcm", "ok/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm",
     "..\\evil.dcm", "D:evil.dcm"],
)  # fmt: skip
def test_member_escaping_the_archive_rejects_the_whole_upload(name: str) -> None:
    upload = _zip({"good.dcm": _file("CT_small.dcm"), name: _file("MR_small.dcm")})

    assert _quarantine_reason("u.zip", upload) == "zip_unsafe_path"


def test_zip_bomb_by_declared_sizes_is_quarantined() -> None:
    upload = _zip({"zeros.dcm": bytes(64 * 1024 * 1024)})

    assert len(upload) < 1024 * 1024  # it really is a bomb
    assert _quarantine_reason("u.zip", upload) == "zip_bomb"


def test_zip_bomb_over_the_whole_archive_is_quarantined() -> None:
    # Each member stays under the 16 MiB below which a member's ratio is not
    # held against it; together they expand far beyond the archive's budget.
    members = {f"z{i}.dcm": bytes(8 * 1024 * 1024) for i in range(8)}
    upload = _zip(members)

    assert _quarantine_reason("u.zip", upload) == "zip_bomb"


def test_member_whose_header_lies_about_its_size_cannot_expand() -> None:
    upload = bytearray(_zip({"zeros.dcm": bytes(64 * 1024 * 1024)}))
    # Declare 1000 bytes in both the local header and the central directory.
    local = upload.index(b"PK\x03\x04")
    central = upload.index(b"PK\x01\x02")
    upload[local + 22 : local + 26] = struct.pack("<I", 1000)
    upload[central + 24 : central + 28] = struct.pack("<I", 1000)

    with pytest.raises(Quarantine) as raised:
        members = _upload("u.zip", bytes(upload))
        assert all(len(getattr(m, "data", b"")) <= 1000 for m in members)
    assert raised.value.reason == "corrupt_zip"


def test_encrypted_member_is_quarantined() -> None:
    upload = bytearray(_zip({"a.dcm": _file("CT_small.dcm")}))
    local = upload.index(b"PK\x03\x04")
    central = upload.index(b"PK\x01\x02")
    upload[local + 6] |= 0x1
    upload[central + 8] |= 0x1

    assert _quarantine_reason("u.zip", bytes(upload)) == "zip_encrypted"


def test_nested_zip_by_name_is_not_supported() -> None:
    inner = _zip({"a.dcm": _file("CT_small.dcm")})
    upload = _zip({"a.dcm": _file("CT_small.dcm"), "inner.zip": inner})

    with pytest.raises(NotSupported, match="nested zip"):
        _upload("u.zip", upload)


def test_nested_zip_by_content_is_not_supported() -> None:
    inner = _zip({"a.dcm": _file("CT_small.dcm")})
    upload = _zip({"inner.dat": inner})

    with pytest.raises(NotSupported) as raised:
        _upload("u.zip", upload)
    assert raised.value.reason == "not_supported.nested_zip"


def test_too_many_members_is_quarantined() -> None:
    upload = _zip({f"{i}.dcm": _file("CT_small.dcm") for i in range(3)})

    limits = Limits(max_zip_members=2)
    assert _quarantine_reason("u.zip", upload, limits) == "zip_too_many_members"


@pytest.mark.parametrize(
    "data",
    [b"PK\x03\x04" + b"\x00" * 200, b"this is not a zip", b""],
    ids=["garbage-after-signature", "text", "empty"],
)
def test_corrupt_zip_is_quarantined(data: bytes) -> None:
    assert _quarantine_reason("u.zip", data) == "corrupt_zip"


def test_zip_with_a_corrupted_member_is_quarantined() -> None:
    upload = bytearray(_zip({"a.dcm": _file("CT_small.dcm")}))
    local = upload.index(b"PK\x03\x04")
    upload[local + 200 : local + 260] = b"\xff" * 60

    assert _quarantine_reason("u.zip", bytes(upload)) == "corrupt_zip"


def test_truncated_dicom_in_a_zip_is_a_member_parse_instance_quarantines() -> None:
    truncated = _file("CT_small.dcm")[:20_000]
    [member] = _upload("u.zip", _zip({"cut.dcm": truncated}))

    assert isinstance(member, UploadMember)
    with pytest.raises(Quarantine) as raised:
        parse_instance(member.name, member.data, LIMITS)
    assert raised.value.reason == "malformed_dicom"


# --- parse_instance --------------------------------------------------------------


def test_parse_instance_returns_the_identifiers() -> None:
    parsed = parse_instance("ct.dcm", _file("CT_small.dcm"), LIMITS)

    dataset = pydicom.dcmread(_path("CT_small.dcm"))
    assert parsed == ParsedInstance(
        dataset=parsed.dataset,
        sop_class_uid=dataset.SOPClassUID,
        sop_instance_uid=dataset.SOPInstanceUID,
        study_instance_uid=dataset.StudyInstanceUID,
        series_instance_uid=dataset.SeriesInstanceUID,
        transfer_syntax_uid=dataset.file_meta.TransferSyntaxUID,
    )


def test_a_file_cut_anywhere_but_between_elements_is_quarantined() -> None:
    data = _file("CT_small.dcm")
    full = pydicom.dcmread(io.BytesIO(data))
    element_ends = set()
    for tag in sorted(full.keys()):
        raw: object = full.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.value_tell is not None:
            element_ends.add(raw.value_tell + raw.length)
    outcomes = set()

    for cut in range(0, len(data), 23):
        try:
            parse_instance("cut.dcm", data[:cut], LIMITS)
        except Quarantine as exc:
            outcomes.add(exc.reason)
        else:
            assert cut in element_ends, f"cut at {cut} was parsed"

    assert outcomes == {"not_dicom", "malformed_dicom", "missing_attribute"}


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_packaged_truncated_files_are_malformed(name: str) -> None:
    with pytest.raises(Quarantine) as raised:
        parse_instance(name, _file(name), LIMITS)
    assert raised.value.reason == "malformed_dicom"


def test_text_is_not_dicom() -> None:
    with pytest.raises(Quarantine) as raised:
        parse_instance("a.txt", b"hello world\n" * 20, LIMITS)
    assert raised.value.reason == "not_dicom"


def test_dataset_without_file_meta_is_not_dicom() -> None:
    with pytest.raises(Quarantine) as raised:
        parse_instance("no_meta.dcm", _file("no_meta.dcm"), LIMITS)
    assert raised.value.reason == "not_dicom"


def test_file_without_preamble_but_with_file_meta_is_accepted() -> None:
    data = _file("CT_small.dcm")

    parsed = parse_instance("ct.dcm", data[132:], LIMITS)

    assert parsed.sop_instance_uid == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID


def _rewritten(name: str, **changes: object) -> bytes:
    dataset = pydicom.dcmread(_path(name))
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def test_every_missing_attribute_is_named() -> None:
    data = _rewritten("CT_small.dcm", PatientID=None, StudyInstanceUID=None)

    with pytest.raises(Quarantine) as raised:
        parse_instance("ct.dcm", data, LIMITS)

    assert raised.value.reason == "missing_attribute"
    assert raised.value.detail == "StudyInstanceUID (0020,000D), PatientID (0010,0020)"


def test_an_empty_patient_id_or_uid_is_missing() -> None:
    with pytest.raises(Quarantine, match=r"PatientID \(0010,0020\)"):
        parse_instance("ct.dcm", _rewritten("CT_small.dcm", PatientID=""), LIMITS)

    with pytest.raises(Quarantine, match=r"SeriesInstanceUID \(0020,000E\)"):
        parse_instance(
            "ct.dcm", _rewritten("CT_small.dcm", SeriesInstanceUID=""), LIMITS
        )


@pytest.mark.parametrize("uid", ["1.2.3.04", "1.2.abc", "1." + "2" * 70])
def test_invalid_uid_is_quarantined(uid: str) -> None:
    data = _rewritten("CT_small.dcm", StudyInstanceUID=uid)

    with pytest.raises(Quarantine) as raised:
        parse_instance("ct.dcm", data, LIMITS)
    assert raised.value.reason == "invalid_uid"
    assert uid not in raised.value.detail


def test_file_meta_sop_instance_uid_mismatch_is_quarantined() -> None:
    # rtplan.dcm's File Meta names another instance than its dataset.
    with pytest.raises(Quarantine) as raised:
        parse_instance("rtplan.dcm", _file("rtplan.dcm"), LIMITS)
    assert raised.value.reason == "sop_instance_uid_mismatch"


def test_unknown_transfer_syntax_is_not_supported_and_named() -> None:
    data = _file("CT_small.dcm")
    known = b"1.2.840.10008.1.2.1\x00"
    assert known in data[:400]
    data = data.replace(known, b"1.2.840.99999.1.2.1\x00", 1)

    with pytest.raises(NotSupported) as raised:
        parse_instance("ct.dcm", data, LIMITS)
    assert raised.value.reason == "not_supported.transfer_syntax"
    assert "1.2.840.99999.1.2.1" in raised.value.detail


def test_instance_beyond_max_instance_bytes_is_quarantined() -> None:
    with pytest.raises(Quarantine, match="instance_too_large"):
        parse_instance("ct.dcm", _file("CT_small.dcm"), Limits(max_instance_bytes=10))


# --- to_part10 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm",
     "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"],
)  # fmt: skip
def test_to_part10_round_trips_in_the_same_transfer_syntax(name: str) -> None:
    # Some packaged files have an empty Patient ID, which ingest refuses.
    parsed = parse_instance(name, _rewritten(name, PatientID="TEST0001"), LIMITS)

    written = to_part10(parsed.dataset)
    again = parse_instance(name, written, LIMITS)

    assert written[:128] == bytes(128)
    assert again.transfer_syntax_uid == parsed.transfer_syntax_uid
    assert again.sop_instance_uid == parsed.sop_instance_uid
    assert again.dataset.PixelData == parsed.dataset.PixelData


def test_to_part10_zeroes_a_non_empty_preamble() -> None:
    data = bytearray(_file("CT_small.dcm"))
    data[:4] = b"MZ\x90\x00"  # a polyglot's executable header in the preamble

    written = to_part10(parse_instance("ct.dcm", bytes(data), LIMITS).dataset)

    assert written[:132] == bytes(128) + b"DICM"
