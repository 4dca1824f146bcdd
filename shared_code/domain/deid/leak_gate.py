"""The leak gate: proves, without trusting the engine, that no original identifying
value survives in the de-identified output.

``collect_needles`` runs on the original, before the engine: the needles are the
values (bytes as encoded) of every attribute that Table E.1-1 and the policy remove
or replace, at any level, File Meta, private and UN elements included, and of every
element nested in a removed sequence. ``check_no_leak`` then searches the encoded
output (File Meta and header; Pixel Data and other bulk data left out, where a short
needle could match image bytes by chance) for each needle, case-blind, and raises
``Quarantine("deid_leak", <output path> holds the value of <original path>)``.

Needles that are not whole names, UIDs, dates or identifiers and that the original
also holds in a kept attribute (a manufacturer in a station name) are dropped: the
profile keeps them. Registered DICOM UIDs, short values and standard codes are not
needles.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import pydicom
from pydicom.charset import convert_encodings, default_encoding, encode_string
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag, tag_in_exception
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)

from shared_code.domain.deid import table
from shared_code.domain.deid.policy import (
    CODE_MEANINGS,
    RETAIN_LONGITUDINAL_MODIFIED_DATES,
    DeidPolicy,
    SafePrivate,
)
from shared_code.errors import Quarantine

_log = logging.getLogger(__name__)

_SEARCHED_VRS = frozenset(
    {"PN", "LO", "SH", "LT", "ST", "UT", "UI", "DA", "DT", "TM", "AE", "CS", "IS"}
    | {"DS", "UC", "UR", "UN", "AS"}
)
_STRONG_VRS = frozenset({"PN", "UI", "DA", "DT"})
_STANDARD_CODES = frozenset(
    {b"YES", b"NO", b"NONE", b"UNKNOWN", b"OTHER", b"REMOVED"}
    | {b"ANON", b"ANONYMOUS", b"ANONYMIZED"}  # dummies, ours or the sender's
)
# A needle shorter than this matches only as a whole word: a short value could
# otherwise turn up inside a pseudonym's hex digits by chance.
_WORD_NEEDLE = 6
_BULK_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010, 0x54001010})
_FILE_META_AE_TITLES = frozenset({0x00020016, 0x00020017, 0x00020018})
# Transfer syntaxes pydicom writes element by element (not deflated).
_PLAIN_SYNTAXES = frozenset(
    uid for uid in AllTransferSyntaxes if uid != DeflatedExplicitVRLittleEndian
)
_MIN_NEEDLE = 3
_PRIVATE_BIT = 0x10000  # odd groups are private
_MIN_NUMERIC_NEEDLE = 8
_MAX_UID = 64
_KEPT, _CLEANED, _REMOVED, _REMOVED_WEAK = "kept", "cleaned", "removed", "weak"
_NUMERIC = re.compile(rb"[0-9.+-]+")


@dataclass(frozen=True)
class Needles:
    """Original values that must not appear in the output: needle -> source path."""

    values: dict[bytes, str]


def collect_needles(dataset: pydicom.Dataset, policy: DeidPolicy) -> Needles:
    """The needles of ``dataset``; call before de-identifying it in place."""
    found: dict[bytes, tuple[str, bool]] = {}
    kept: list[bytes] = [meaning.upper().encode() for meaning in CODE_MEANINGS.values()]
    fates = _public_fates(policy)
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        for tag, element in list(file_meta.items()):
            fate = (
                _REMOVED if tag in _FILE_META_AE_TITLES else _fate(tag, policy, set())
            )
            _take(element, tag, "", fate, ["iso8859"], found, kept)
    _collect(dataset, policy, fates, "", False, ["iso8859"], found, kept)

    kept_text = b"\n".join(kept).upper()
    values = {
        needle: path
        for needle, (path, strong) in found.items()
        if (strong and not _is_date(needle)) or needle not in kept_text
    }
    return Needles(values)


def check_no_leak(needles: Needles, deidentified: pydicom.Dataset) -> None:
    """Raise ``Quarantine("deid_leak", ...)`` if a needle is in the encoded output."""
    haystack = _value_bytes(deidentified)
    if haystack is None:
        haystack = header_bytes(deidentified)
    haystack = haystack.upper()
    for needle, source in needles.values.items():
        if needle in haystack and _token(needle).search(haystack):
            where = _find_path(deidentified, needle)
            _log.warning("de-identification leak", extra={"attribute": where})
            raise Quarantine("deid_leak", f"{where} holds the value of {source}")


def header_bytes(dataset: pydicom.Dataset) -> bytes:
    """The dataset written as Part 10 without its bulk pixel and waveform data."""
    held = [(tag, dataset.get_item(tag)) for tag in _tags(dataset) if tag in _BULK_TAGS]
    for tag, _ in held:
        del dataset[tag]
    # A deflated file is written compressed: scan the values before compression.
    file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    deflated = file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    if deflated:
        file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, dataset)
    except (TypeError, ValueError, AttributeError, OSError) as error:
        # What cannot be written cannot be checked, nor released.
        raise Quarantine("deid_unwritable", type(error).__name__) from None
    finally:
        if deflated:
            file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        for tag, element in held:
            dataset[tag] = element
    return buffer.getvalue()


def _value_bytes(dataset: pydicom.Dataset) -> bytes | None:
    """What ``header_bytes`` would hold that a needle can match, without writing
    the file: the File Meta and header element values as encoded (a raw value as
    read, a changed one as pydicom writes it), NUL-separated. None when pydicom's
    writer would re-encode the dataset (another transfer syntax or character set,
    deflate, no File Meta): then only ``header_bytes`` tells.
    """
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is None:
        return None
    syntax = file_meta.get("TransferSyntaxUID")
    if syntax not in _PLAIN_SYNTAXES or any(
        tag >> 16 in (0, 2) for tag in _tags(dataset)
    ):
        return None
    encoding = (bool(syntax.is_implicit_VR), bool(syntax.is_little_endian))
    charset = dataset.get("SpecificCharacterSet", default_encoding)
    # As pydicom's writer tells a changed character set (Dataset._character_set).
    current = convert_encodings(charset) if 0x00080005 in dataset else default_encoding
    if (
        encoding != dataset.original_encoding
        or dataset.original_character_set != current
        or len(getattr(dataset, "preamble", None) or b"\0" * 128) != 128
    ):
        return None
    parts: list[bytes] = []
    try:
        plain = _element_values(
            file_meta, (False, True), default_encoding, default_encoding, parts
        )
        plain = plain and _element_values(dataset, encoding, charset, current, parts)
    except (TypeError, ValueError, AttributeError, OSError) as error:
        # What cannot be written cannot be checked, nor released.
        raise Quarantine("deid_unwritable", type(error).__name__) from None
    return b"\0".join(parts) if plain else None


def _element_values(
    dataset: pydicom.Dataset,
    encoding: tuple[bool, bool],
    charset: str | list[str],
    current: str | list[str],
    parts: list[bytes],
    *,
    top: bool = True,
) -> bool:
    """Add the values of ``dataset`` to ``parts``; False when a raw element is in
    another encoding than the one written (pydicom would re-encode it).

    ``charset`` is what pydicom's writer encodes text with, ``current`` what it
    compares with an item's original character set."""
    for tag in _tags(dataset):
        if (top and tag in _BULK_TAGS) or (tag.element == 0 and tag.group > 6):
            continue  # bulk data, and group lengths pydicom does not write
        element = dataset.get_item(tag)
        if isinstance(element, RawDataElement):
            if (element.is_implicit_VR, element.is_little_endian) != encoding:
                return False
            if element.value:
                parts.append(element.value)
            continue
        if element.VR == "SQ" and element.value:
            # Items as read are walked like the dataset: their raw elements need
            # no encoding. Items pydicom would re-encode are written whole.
            items = [_item_charsets(item, charset, current) for item in element.value]
            if all(
                item.original_encoding == encoding
                and item.original_character_set == now
                for item, (_, now) in zip(element.value, items, strict=True)
            ):
                for item, (text, now) in zip(element.value, items, strict=True):
                    if not _element_values(item, encoding, text, now, parts, top=False):
                        return False
                continue
        buffer = DicomBytesIO()
        buffer.is_implicit_VR, buffer.is_little_endian = encoding
        with tag_in_exception(tag):
            write_data_element(buffer, element, charset)
        parts.append(buffer.getvalue())
    return True


def _item_charsets(
    item: pydicom.Dataset, charset: str | list[str], current: str | list[str]
) -> tuple[str | list[str], str | list[str]]:
    """An item's (writer's charset, current charset) under its parent's."""
    if 0x00080005 in item:
        value = item.SpecificCharacterSet
        return value, convert_encodings(value)
    return charset, current


def _collect(
    dataset: pydicom.Dataset,
    policy: DeidPolicy,
    fates: dict[int, str],
    prefix: str,
    removed: bool,
    encodings: list[str],
    found: dict[bytes, tuple[str, bool]],
    kept: list[bytes],
) -> None:
    if 0x00080005 in dataset:
        encodings = convert_encodings(dataset.SpecificCharacterSet)
    safe = _safe_private(dataset, policy.safe_private) if policy.safe_private else set()
    # items() gives the elements as held, raw ones not decoded.
    for tag, raw in list(dataset.items()):
        key = int(tag)  # a plain int: BaseTag's __eq__ makes dict look-ups slow
        if key & _PRIVATE_BIT:
            fate = _fate(key, policy, safe)
        else:
            fate = fates.get(key) or fates.setdefault(key, _fate(key, policy, safe))
        if removed and fate in (_KEPT, _CLEANED):
            fate = _REMOVED_WEAK  # in a removed sequence: gone, but not by its row
        vr = raw.VR or _dictionary_vr(tag)
        if vr == "SQ" or (vr == "UN" and _dictionary_vr(tag) == "SQ"):
            gone = fate in (_REMOVED, _REMOVED_WEAK)
            path = prefix + _tag_text(tag)
            for index, item in enumerate(dataset[tag].value or ()):
                _collect(
                    item,
                    policy,
                    fates,
                    f"{path}[{index}].",
                    gone,
                    encodings,
                    found,
                    kept,
                )
            if isinstance(raw, RawDataElement):
                # Left as read: unchanged by the engine, it is written as its bytes.
                dataset[tag] = raw
            continue
        _take(raw, tag, prefix, fate, encodings, found, kept)


@lru_cache(maxsize=64)
def _public_fates(policy: DeidPolicy) -> dict[int, str]:
    """A cache of ``_fate`` for public tags under one policy, filled as used."""
    return {}


def _fate(tag: int, policy: DeidPolicy, safe: set[int]) -> str:
    """What Table E.1-1 and the policy (not the engine) say becomes of the tag."""
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        return _KEPT if tag in safe else _REMOVED_WEAK
    if (group & 0xFF00) in (0x5000, 0x6000) or element == 0:
        return _REMOVED
    found = table.table_action(tag, policy)
    if found is None:
        return _KEPT
    action, rule = found
    if action == "C":
        if rule == RETAIN_LONGITUDINAL_MODIFIED_DATES:
            # Dates are shifted, so the original must be gone; times stay.
            return _REMOVED if _dictionary_vr(tag) in ("DA", "DT") else _KEPT
        return _CLEANED
    if action in ("K", "X/Z/U*"):
        return _KEPT
    return _REMOVED


def _take(
    element: RawDataElement | DataElement,
    tag: int,
    prefix: str,
    fate: str,
    encodings: list[str],
    found: dict[bytes, tuple[str, bool]],
    kept: list[bytes],
) -> None:
    if fate == _CLEANED:
        return  # neither a needle nor proof that a value may stay
    vr = element.VR or _dictionary_vr(tag)
    if vr not in _SEARCHED_VRS:
        return
    values = _encoded_values(element, vr, encodings)
    if fate == _KEPT:
        kept.extend(values)
        return
    strong = fate == _REMOVED and (vr in _STRONG_VRS or _is_identifier(int(tag)))
    path = prefix + _tag_text(tag)
    for value in values:
        for needle, whole in _needles(value, vr):
            _, was_strong = found.get(needle, (path, False))
            found[needle] = (path, (strong and whole) or was_strong)


def _encoded_values(
    element: RawDataElement | DataElement, vr: str, encodings: list[str]
) -> list[bytes]:
    value = element.value
    if value is None:
        return []
    if isinstance(value, bytes):
        parts = value.split(b"\\") if vr != "UN" else [value]
    else:
        items = list(value) if isinstance(value, list | tuple) else [value]
        parts = []
        for item in items:
            if hasattr(item, "encode") and vr == "PN":
                parts.append(item.encode(encodings))
            else:
                parts.append(encode_string(str(item), encodings))
    stripped = (part.strip(b" \x00").upper() for part in parts)
    return [part for part in stripped if part]


def _token(needle: bytes) -> re.Pattern[bytes]:
    """Numbers, dates and UIDs match whole (not inside a longer UID); short words
    match as words; longer text matches anywhere."""
    if _NUMERIC.fullmatch(needle):
        edge = rb"[0-9.]"
    elif len(needle) < _WORD_NEEDLE:
        edge = rb"[A-Z0-9]"
    else:
        return re.compile(re.escape(needle))
    return re.compile(
        rb"(?<!" + edge + rb")" + re.escape(needle) + rb"(?!" + edge + b")"
    )


def _is_date(needle: bytes) -> bool:
    return len(needle) >= 8 and needle[:8].isdigit() and b"." not in needle


def _needles(value: bytes, vr: str) -> list[tuple[bytes, bool]]:
    candidates = [(value, True)]
    if vr in ("PN", "UN"):
        candidates += [
            (part.strip(), False)
            for part in value.replace(b"=", b"^").split(b"^")
            if len(part.strip()) > _MIN_NEEDLE
        ]
    return [(c, whole) for c, whole in candidates if _is_needle(c)]


@lru_cache(maxsize=4096)
def _is_needle(value: bytes) -> bool:
    if len(value) < _MIN_NEEDLE or value in _STANDARD_CODES:
        return False
    digits = value.replace(b".", b"").replace(b"-", b"").replace(b"+", b"")
    if digits.isdigit():
        if len(value) < _MIN_NUMERIC_NEEDLE:
            return False
        text = value.decode("ascii")
        if PYDICOM_IMPLEMENTATION_UID.startswith(text):
            return False  # the implementation (or its root) we name as the writer
        if len(text) <= _MAX_UID and RE_VALID_UID.match(text):
            return UID(text).name == text  # a registered DICOM UID is public
    return True


@lru_cache(maxsize=4096)
def _is_identifier(tag: int) -> bool:
    keyword = keyword_for_tag(tag) if not (tag >> 16) & 1 else ""
    return keyword.endswith(("ID", "IDs", "Number", "Numbers"))


def _safe_private(
    dataset: pydicom.Dataset, allowed: frozenset[SafePrivate]
) -> set[int]:
    creators = {}
    for tag in _tags(dataset):
        if tag.group & 1 and 0x10 <= tag.element <= 0xFF:
            value = dataset.get_item(tag).value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            creators[(tag.group, tag.element)] = text.strip(" \x00")
    safe = set()
    for tag in _tags(dataset):
        if tag.group & 1 and tag.element >= 0x1000:
            creator = creators.get((tag.group, tag.element >> 8), "")
            if SafePrivate(creator, tag.element & 0xFF) in allowed:
                safe.add(int(tag))
    return safe


def _find_path(dataset: pydicom.Dataset, needle: bytes) -> str:
    """The output attribute holding ``needle``: a slow walk, only after a hit."""
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        for tag in _tags(file_meta):
            if _holds(file_meta, tag, needle, ["iso8859"]):
                return _tag_text(tag)
    return next(_walk_for(dataset, needle, "", ["iso8859"]), "(header)")


def _walk_for(
    dataset: pydicom.Dataset, needle: bytes, prefix: str, encodings: list[str]
) -> Iterator[str]:
    if 0x00080005 in dataset:
        encodings = convert_encodings(dataset.SpecificCharacterSet)
    for tag in _tags(dataset):
        path = prefix + _tag_text(tag)
        element = dataset[tag]
        if element.VR == "SQ":
            for index, item in enumerate(element.value or ()):
                yield from _walk_for(item, needle, f"{path}[{index}].", encodings)
        elif _holds(dataset, tag, needle, encodings):
            yield path


def _holds(dataset: pydicom.Dataset, tag: int, needle: bytes, enc: list[str]) -> bool:
    element = dataset.get_item(tag)
    vr = element.VR or _dictionary_vr(tag)
    if vr not in _SEARCHED_VRS and vr not in ("OB", "OW"):
        return False
    if isinstance(element.value, bytes):
        return needle in element.value.upper()
    return any(needle in value for value in _encoded_values(element, vr, enc))


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def _tags(dataset: pydicom.Dataset) -> list[BaseTag]:
    # Iterating a Dataset converts every raw element; its keys do not.
    return list(dataset.keys())


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
