"""Safe reading of uploads: a .dcm or a .zip of them, then one DICOM instance at a time.

``iter_upload`` turns one uploaded blob into members (one per DICOM file) without ever
expanding a whole archive in memory; ``parse_instance`` parses one member and checks
what an archive needs; ``to_part10`` writes an instance back as a DICOM Part 10 file.

Reason codes (``Quarantine.reason``), stable for quarantine records and audits:

Whole upload (raised by ``iter_upload``; the upload goes to quarantine whole):
- ``upload_too_large``: the upload is bigger than ``Limits.max_upload_bytes``.
- ``unsupported_upload``: the upload is neither a DICOM file nor a zip archive.
- ``corrupt_zip``: the zip cannot be read (bad directory, bad CRC, bad data).
- ``zip_too_many_members``: more members than ``Limits.max_zip_members``.
- ``zip_bomb``: a member, or the whole archive, expands beyond
  ``Limits.max_zip_ratio`` (declared sizes are checked before the first member is
  yielded; actual bytes are counted while reading, so a lying header is caught too).
- ``zip_unsafe_path``: a member name is absolute, has a drive letter or a ``..``
  part. The upload is treated as hostile: no member of it is used.
- ``zip_encrypted``: a member is encrypted.
- ``not_supported.nested_zip``: a zip inside the zip.
- ``not_supported.zip_compression``: a compression method Python cannot read.

One member (``MemberRejected.error``; the other members go on):
- ``instance_too_large``: bigger than ``Limits.max_instance_bytes``.
- ``not_dicom``: no DICOM preamble and "DICM" prefix, nor a File Meta group.

One instance (raised by ``parse_instance``):
- ``not_dicom``, ``malformed_dicom`` (truncated or unreadable data),
  ``missing_attribute`` (detail names every missing one), ``invalid_uid``,
  ``sop_instance_uid_mismatch`` (File Meta vs dataset),
  ``not_supported.transfer_syntax`` (detail names the transfer syntax UID).

Details never hold patient data: members are named by their index in the archive,
UIDs by a short hash.
"""

from __future__ import annotations

import io
import logging
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import RE_VALID_UID, UID

from shared_code.config import Limits
from shared_code.domain.redact import uid_hash
from shared_code.errors import NotSupported, Quarantine

_log = logging.getLogger(__name__)

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
# A file without the preamble may still start with its File Meta group (0002,0000..).
_FILE_META_START = b"\x02\x00"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_HEAD_BYTES = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)
_CHUNK_BYTES = 1024 * 1024
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_ZIP_ENCRYPTED_FLAG = 0x1
# (0002,0002) Media Storage SOP Class UID = Media Storage Directory Storage (DICOMDIR),
# as the explicit VR little endian File Meta always encodes it (20 characters, even).
_MEDIA_STORAGE_DIRECTORY = b"\x02\x00\x02\x00UI\x14\x001.2.840.10008.1.3.10"
_MAX_UID = 64
# Ratios count only past this many expanded bytes: a small blank image compresses
# far beyond any sane ratio, and a few MiB cannot hurt (members are read one by one).
_RATIO_FLOOR_BYTES = 16 * 1024 * 1024

# What pydicom raises on bad input; anything else is a bug and must surface.
_PARSE_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    struct.error,
    OverflowError,
    NotImplementedError,
    RecursionError,
    zlib.error,
)
_ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)

_REQUIRED = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
    ("PatientID", "(0010,0020)"),
)
_REQUIRED_UIDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)


@dataclass(frozen=True)
class UploadMember:
    """One file of an upload that looks like DICOM."""

    name: str
    data: bytes


@dataclass(frozen=True)
class MemberSkipped:
    """A member that is not content (a folder, a DICOMDIR, macOS metadata)."""

    name: str
    reason: str


@dataclass(frozen=True)
class MemberRejected:
    """A member that goes to quarantine alone; the other members go on."""

    name: str
    error: Quarantine


@dataclass(frozen=True)
class ParsedInstance:
    """A parsed DICOM instance with the identifiers the archive needs."""

    dataset: pydicom.Dataset
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str


def iter_upload(
    upload_name: str, stream: BinaryIO, size: int, limits: Limits
) -> Iterator[UploadMember | MemberSkipped | MemberRejected]:
    """Yield the members of one upload, reading one member at a time.

    ``stream`` must be seekable (a zip's directory is at its end). Whole-upload
    problems raise ``Quarantine``; the declared-size checks happen before the first
    member is yielded, so a raise after that means a hostile or corrupt archive and
    the caller must discard the members it already got.
    """
    actual_size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    if max(size, actual_size) > limits.max_upload_bytes:
        raise Quarantine(
            "upload_too_large",
            f"{max(size, actual_size)} bytes > {limits.max_upload_bytes}",
        )

    head = stream.read(_HEAD_BYTES)
    stream.seek(0)
    if _looks_like_dicom(head):
        yield _single_file(upload_name, stream, limits)
    elif head.startswith(_ZIP_MAGICS):
        yield from _zip_members(stream, actual_size, limits)
    elif upload_name.lower().endswith(".zip"):
        raise Quarantine("corrupt_zip", "a .zip upload without the zip signature")
    else:
        raise Quarantine(
            "unsupported_upload", "neither a DICOM Part 10 file nor a zip archive"
        )


def parse_instance(name: str, data: bytes, limits: Limits) -> ParsedInstance:
    """Parse one DICOM Part 10 file and check what an archive needs of it."""
    if len(data) > limits.max_instance_bytes:
        raise Quarantine(
            "instance_too_large", f"{len(data)} bytes > {limits.max_instance_bytes}"
        )
    if not _looks_like_dicom(data[:_HEAD_BYTES]):
        raise Quarantine("not_dicom", "no DICOM preamble, DICM prefix or File Meta")

    has_preamble = data[_DICOM_MAGIC_OFFSET:_HEAD_BYTES] == _DICOM_MAGIC
    try:
        # force only for files that start straight with their File Meta group;
        # the File Meta check below rejects anything else force lets through.
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
        _check_ends_with_last_element(dataset, len(data))
        _check_complete(dataset)
    except _PARSE_ERRORS as exc:
        raise Quarantine("malformed_dicom", f"{type(exc).__name__}: {exc}") from None

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        raise Quarantine("not_dicom", "no File Meta Information with a transfer syntax")
    transfer_syntax = UID(str(file_meta.TransferSyntaxUID))
    if not transfer_syntax.is_transfer_syntax:
        raise NotSupported(
            "transfer_syntax",
            f"transfer syntax {transfer_syntax} is unknown; send the instance in "
            "a standard transfer syntax",
        )

    try:
        identifiers = _identifiers(dataset)
    except _PARSE_ERRORS as exc:
        raise Quarantine("malformed_dicom", f"{type(exc).__name__}: {exc}") from None
    _check_file_meta(dataset, identifiers["SOPInstanceUID"])
    _log.debug(
        "parsed instance sop=%s member=%s",
        uid_hash(identifiers["SOPInstanceUID"]),
        uid_hash(name),
    )
    return ParsedInstance(
        dataset=dataset,
        sop_class_uid=identifiers["SOPClassUID"],
        sop_instance_uid=identifiers["SOPInstanceUID"],
        study_instance_uid=identifiers["StudyInstanceUID"],
        series_instance_uid=identifiers["SeriesInstanceUID"],
        transfer_syntax_uid=str(transfer_syntax),
    )


def to_part10(dataset: pydicom.Dataset) -> bytes:
    """The instance as a DICOM Part 10 file in its own transfer syntax.

    The preamble is written as zeros: a preamble is free-form and can make a file
    another format too (a DICOM/executable polyglot, CVE-2019-11687).
    """
    buffer = io.BytesIO()
    preamble = getattr(dataset, "preamble", None)
    try:
        dataset.preamble = b"\x00" * _DICOM_MAGIC_OFFSET
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    finally:
        dataset.preamble = preamble
    return buffer.getvalue()


def _looks_like_dicom(head: bytes) -> bool:
    return head[_DICOM_MAGIC_OFFSET:_HEAD_BYTES] == _DICOM_MAGIC or head.startswith(
        _FILE_META_START
    )


def _single_file(
    upload_name: str, stream: BinaryIO, limits: Limits
) -> UploadMember | MemberRejected:
    name = upload_name.replace("\\", "/").rsplit("/", 1)[-1]
    data = stream.read(limits.max_instance_bytes + 1)
    if len(data) > limits.max_instance_bytes:
        return MemberRejected(name, _too_large(limits))
    return UploadMember(name, data)


def _zip_members(
    stream: BinaryIO, archive_size: int, limits: Limits
) -> Iterator[UploadMember | MemberSkipped | MemberRejected]:
    try:
        archive = zipfile.ZipFile(stream)
    except _ZIP_READ_ERRORS as exc:
        raise Quarantine("corrupt_zip", f"{type(exc).__name__}: {exc}") from None

    with archive:
        members = archive.infolist()
        _check_zip_directory(members, archive_size, limits)
        budget = _expansion_budget(archive_size, limits)
        expanded = 0
        for index, info in enumerate(members):
            skip_reason = _skip_reason(info)
            if skip_reason:
                yield MemberSkipped(info.filename, skip_reason)
                continue
            if info.file_size > limits.max_instance_bytes:
                yield MemberRejected(info.filename, _too_large(limits))
                continue

            data = _read_member(archive, info, index, limits)
            expanded += len(data)
            if expanded > budget:
                raise Quarantine(
                    "zip_bomb", f"the archive expands beyond {limits.max_zip_ratio}x"
                )
            if data.startswith(_ZIP_MAGICS):
                raise _nested_zip(index)
            if len(data) > limits.max_instance_bytes:
                yield MemberRejected(info.filename, _too_large(limits))
            elif not _looks_like_dicom(data[:_HEAD_BYTES]):
                yield MemberRejected(
                    info.filename,
                    Quarantine("not_dicom", f"member {index} is not a DICOM file"),
                )
            elif _is_media_directory(data):
                yield MemberSkipped(info.filename, "dicomdir")
            else:
                yield UploadMember(info.filename, data)


def _check_zip_directory(
    members: list[zipfile.ZipInfo], archive_size: int, limits: Limits
) -> None:
    """Reject a hostile or unsupported archive before any member is used."""
    if len(members) > limits.max_zip_members:
        raise Quarantine(
            "zip_too_many_members", f"{len(members)} > {limits.max_zip_members}"
        )
    declared_total = 0
    for index, info in enumerate(members):
        if _unsafe_path(info.filename):
            raise Quarantine("zip_unsafe_path", f"member {index} escapes the archive")
        if info.flag_bits & _ZIP_ENCRYPTED_FLAG:
            raise Quarantine("zip_encrypted", f"member {index} is encrypted")
        if info.filename.lower().endswith(".zip"):
            raise _nested_zip(index)
        if info.file_size > _expansion_budget(info.compress_size, limits):
            raise Quarantine(
                "zip_bomb", f"member {index} expands beyond {limits.max_zip_ratio}x"
            )
        declared_total += info.file_size
    if declared_total > _expansion_budget(archive_size, limits):
        raise Quarantine(
            "zip_bomb", f"the archive expands beyond {limits.max_zip_ratio}x"
        )


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, index: int, limits: Limits
) -> bytes:
    """The member's bytes, counted while read: at most max_instance_bytes + 1."""
    chunks = []
    total = 0
    try:
        with archive.open(info) as member:
            while total <= limits.max_instance_bytes:
                chunk = member.read(_CHUNK_BYTES)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > _expansion_budget(info.compress_size, limits):
                    raise Quarantine(
                        "zip_bomb",
                        f"member {index} expands beyond {limits.max_zip_ratio}x",
                    )
    except NotImplementedError as exc:
        raise NotSupported(
            "zip_compression", f"member {index}: {exc}; use deflate or store"
        ) from None
    except _ZIP_READ_ERRORS as exc:
        raise Quarantine(
            "corrupt_zip", f"member {index}: {type(exc).__name__}: {exc}"
        ) from None
    return b"".join(chunks)


def _expansion_budget(compressed_bytes: int, limits: Limits) -> float:
    return max(compressed_bytes * limits.max_zip_ratio, _RATIO_FLOOR_BYTES)


def _is_media_directory(data: bytes) -> bool:
    """A DICOMDIR under another name: its File Meta says Media Storage Directory.

    Only the File Meta group is looked at (its length is its first element), so a
    directory is recognised without parsing the file.
    """
    start = _HEAD_BYTES
    group_length = data[start : start + 12]
    if len(group_length) < 12 or group_length[:6] != b"\x02\x00\x00\x00UL":
        return False
    (meta_length,) = struct.unpack("<I", group_length[8:12])
    meta = data[start + 12 : start + 12 + meta_length]
    return _MEDIA_STORAGE_DIRECTORY in meta


def _skip_reason(info: zipfile.ZipInfo) -> str:
    path = info.filename.replace("\\", "/")
    base = path.rstrip("/").rsplit("/", 1)[-1]
    if info.is_dir():
        return "directory"
    if path.startswith("__MACOSX/") or base == ".DS_Store" or base.startswith("._"):
        return "macos_metadata"
    if base.upper() == "DICOMDIR":
        return "dicomdir"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink"
    return ""


def _unsafe_path(name: str) -> bool:
    path = name.replace("\\", "/")
    return (
        path.startswith("/")
        or bool(_DRIVE_LETTER.match(path))
        or "\x00" in path
        or ".." in path.split("/")
    )


def _nested_zip(index: int) -> NotSupported:
    return NotSupported(
        "nested_zip", f"member {index} is a nested zip; upload each zip on its own"
    )


def _too_large(limits: Limits) -> Quarantine:
    return Quarantine(
        "instance_too_large", f"a member is bigger than {limits.max_instance_bytes}"
    )


def _check_ends_with_last_element(dataset: pydicom.Dataset, size: int) -> None:
    """Fail when bytes follow the last element: a file cut inside an element header.

    pydicom stops without complaint when fewer than 8 bytes of a header remain.
    """
    tags = list(dataset.keys())
    if not tags:
        raise EOFError("no data elements")
    last = dataset.get_item(tags[-1])
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return  # an undefined length ends with a delimiter pydicom insists on
    end = last.value_tell + last.length
    if end < size:
        raise EOFError(f"{size - end} bytes after the last data element")


def _check_complete(dataset: pydicom.Dataset) -> None:
    """Convert every element, failing on values cut short by a truncated file.

    pydicom reads a value whose length runs past the end of the data without
    complaint; the raw element still carries the declared length, so compare.
    """
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.value is not None
            and raw.length != 0xFFFFFFFF
            and len(raw.value) < raw.length
        ):
            raise EOFError(
                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is truncated: "
                f"{len(raw.value)} of {raw.length} bytes"
            )
        element = dataset[tag]
        if element.VR == "SQ":
            for item in element.value:
                _check_complete(item)


def _identifiers(dataset: pydicom.Dataset) -> dict[str, str]:
    # Patient ID is Type 2 in the IODs, but an exchange cannot file an image under
    # nobody: FHIR's ImagingStudy needs a subject, a PACS a patient to reconcile to.
    missing = [
        f"{keyword} {tag}"
        for keyword, tag in _REQUIRED
        if keyword not in dataset or not str(dataset[keyword].value or "").strip()
    ]
    if missing:
        raise Quarantine("missing_attribute", ", ".join(missing))

    identifiers = {
        keyword: str(dataset[keyword].value or "") for keyword, _ in _REQUIRED
    }
    for keyword in _REQUIRED_UIDS:
        uid = identifiers[keyword]
        # not UID(...).is_valid: constructing a UID warns about the bad value
        if len(uid) > _MAX_UID or not RE_VALID_UID.match(uid):
            raise Quarantine(
                "invalid_uid", f"{keyword} is not a valid UID ({uid_hash(uid)})"
            )
    return identifiers


def _check_file_meta(dataset: pydicom.Dataset, sop_instance_uid: str) -> None:
    file_meta = dataset.file_meta
    media_uid = str(file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    if not media_uid:
        # Type 1 in the File Meta, but derivable: fill it rather than reject.
        file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    elif media_uid != sop_instance_uid:
        raise Quarantine(
            "sop_instance_uid_mismatch",
            f"MediaStorageSOPInstanceUID {uid_hash(media_uid)} != "
            f"SOPInstanceUID {uid_hash(sop_instance_uid)}",
        )
    if not file_meta.get("MediaStorageSOPClassUID"):
        file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
