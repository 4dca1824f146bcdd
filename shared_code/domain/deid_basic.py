"""First cut of research de-identification: the PS3.15 Basic Application Level
Confidentiality Profile (Table E.1-1, edition in ``ps315_table.EDITION``).

``deidentify_basic`` changes a dataset in place, at every nesting level and in the
File Meta; ``check_no_leak`` then proves that no value the profile removes or
replaces survives anywhere in the output. The full engine (profile options, clean
descriptors, structured content) is a later issue.

How each action is carried out:
- ``X`` removes the element, ``Z`` empties it, ``K`` keeps it.
- ``U`` replaces each UID with ``keyed_uid`` (a keyed HMAC under 2.25), so every
  reference to a UID, at any level and in the File Meta, maps the same way.
- ``D`` writes a dummy of the element's VR: person names become ``ANON^`` and 8 hex
  digits of an HMAC of the name, Patient ID 16 hex digits of an HMAC of the ID (the
  same patient stays linkable within one key), dates 19000101, times 000000, other
  text ``ANONYMIZED``, numbers 0. ``C`` (clean) is treated as ``D`` here.
- Conditional actions keep the output valid without knowing the IOD: if the table
  says the attribute is in no standard composite IOD (stdCompIOD N) an action that
  offers ``X`` removes it; otherwise ``X/Z`` empties it, and ``X/D``, ``Z/D`` and
  ``X/Z/D`` write a dummy (a dummy is valid for Type 1 and Type 2 alike, an empty
  value is not). ``X/Z/U*`` sequences are kept and their items de-identified.
- A sequence that is to be emptied or given a dummy (``Z``, ``D``) loses all its
  items: a dummy item would need the sequence's macro, and its code values (an
  institution's or a person's code) are identifying. This empties the SR Content
  Sequence; the full engine cleans structured content instead.
- Also removed: every private element (the profile's default), elements of even
  groups that the DICOM dictionary does not know (they could hold anything), group
  lengths (stale after the changes), whole overlay groups 60xx (the table removes
  Overlay Data; the rest of an overlay plane is then invalid), curve groups 50xx,
  the File Meta's AE titles and private information, and the preamble (zeroed).

Then Patient Identity Removed is YES, De-identification Method and its code
sequence (113100, DCM, Basic Application Confidentiality Profile) are set, and
Longitudinal Temporal Information Modified is REMOVED (dates are emptied or dummies).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
from pydicom.datadict import dictionary_has_tag, get_entry
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, RE_VALID_UID, UID

from shared_code.domain import ps315_table
from shared_code.errors import Quarantine

_log = logging.getLogger(__name__)

_PATIENT_ID = 0x00100020
_DEID_METHOD = f"DICOM Exchange: PS3.15 Basic Profile ({ps315_table.EDITION})"
_BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
# Source, Sending, Receiving AE Title; Private Information Creator UID and data.
_FILE_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_DUMMY_TEXT = "ANONYMIZED"
_IMPLEMENTATION_VERSION = "DCMEXCH_DEID_1"
_DUMMIES: dict[str, object] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "UR": "",
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "UN": b"",
}
_TEXT_VRS = {"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_SEARCHED_VRS = {
    "PN", "LO", "SH", "LT", "ST", "UT", "UI", "DA", "DT", "TM", "AE", "CS", "IS",
    "DS", "UC", "UR",
}  # fmt: skip
# Values that always identify: a found copy is a leak even if the original also
# had it in an attribute the profile keeps.
_STRONG_VRS = {"PN", "UI", "DA", "DT"}
_STANDARD_CODES = {"YES", "NO", "NONE", "UNKNOWN", "OTHER", _DUMMY_TEXT, "REMOVED"}
_MIN_NEEDLE = 3
_MIN_NUMERIC_NEEDLE = 8
_MAX_UID = 64


@dataclass(frozen=True)
class DeidResult:
    """What was done: (attribute path, action) in the order applied."""

    actions: tuple[tuple[str, str], ...]


def deidentify_basic(dataset: pydicom.Dataset, key: bytes) -> DeidResult:
    """Apply the Basic Profile to ``dataset`` in place, File Meta included.

    Keep a copy of the original (``copy.deepcopy``) to run ``check_no_leak`` after.
    """
    if not key:
        raise ValueError("a pseudonymisation key is required")
    actions: list[tuple[str, str]] = []
    _deidentify_items(dataset, key, "", actions)

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        _deidentify_file_meta(file_meta, key, actions)
    if getattr(dataset, "preamble", None) is not None:
        dataset.preamble = b"\x00" * 128

    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = _DEID_METHOD
    code = pydicom.Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _BASIC_PROFILE_CODE
    dataset.DeidentificationMethodCodeSequence = Sequence([code])
    dataset.LongitudinalTemporalInformationModified = "REMOVED"
    _log.debug("de-identified with %d actions", len(actions))
    return DeidResult(tuple(actions))


def keyed_uid(uid: str, key: bytes) -> str:
    """A UID under 2.25 derived from ``uid`` with an HMAC-SHA256 keyed by ``key``."""
    digest = hmac.new(key, uid.encode("ascii"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def pseudonym_patient_id(patient_id: str, key: bytes) -> str:
    """The Patient ID pseudonym: 16 hex digits of HMAC-SHA256(key, ID)."""
    return hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:16]


def pseudonym_person_name(name: str, key: bytes) -> str:
    """A person name pseudonym: ANON^ and 8 hex digits of HMAC-SHA256(key, name)."""
    return "ANON^" + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:8]


def check_no_leak(original: pydicom.Dataset, deidentified: pydicom.Dataset) -> None:
    """Raise ``Quarantine("deid_leak", path)`` if a removed value is in the output.

    The needles are the string values of every element the profile removes or
    replaces in ``original`` (any level, File Meta and private elements included),
    less empty and short ones, standard codes and registered DICOM UIDs. Names also
    give their components. A needle that is not a whole name, UID, date or
    identifier and that the original also holds in a kept attribute (a
    manufacturer, an image type) is not identifying by the profile's own terms,
    so it is dropped. The haystack is every string value
    of the output (and the raw bytes of UN elements); matching ignores case.
    """
    needles: dict[str, tuple[str, bool]] = {}
    kept: set[str] = set()
    for path, element, action in _walk_original(original):
        values = _strings(element)
        if action == "K":
            kept.update(values)
            continue
        strong = element.VR in _STRONG_VRS or _is_identifier(element)
        for value in values:
            for needle, whole in _needles(value, element.VR):
                _, was_strong = needles.get(needle, (path, False))
                needles[needle] = (path, (strong and whole) or was_strong)
    kept_text = "\n".join(kept)
    searched = {
        needle: path
        for needle, (path, strong) in needles.items()
        if strong or needle not in kept_text
    }

    for out_path, value in _haystack(deidentified):
        for needle, source_path in searched.items():
            if needle in value:
                raise Quarantine(
                    "deid_leak", f"{out_path} holds the value of {source_path}"
                )


def _deidentify_items(
    dataset: pydicom.Dataset, key: bytes, prefix: str, actions: list[tuple[str, str]]
) -> None:
    for tag in list(dataset.keys()):
        element = dataset[tag]
        path = prefix + _tag_text(tag)
        action = _resolved_action(tag, element.VR)

        if action == "K":
            if element.VR == "SQ":
                for index, item in enumerate(element.value):
                    _deidentify_items(item, key, f"{path}[{index}].", actions)
            continue
        if action == "X":
            del dataset[tag]
        elif action == "Z" or element.VR == "SQ":
            element.value = element.empty_value
            action = "Z"
        elif action == "U":
            _replace_uids(element, key)
        else:
            _write_dummy(element, key)
        actions.append((path, action))


def _deidentify_file_meta(
    file_meta: pydicom.Dataset, key: bytes, actions: list[tuple[str, str]]
) -> None:
    for tag in _FILE_META_REMOVED:
        if tag in file_meta:
            del file_meta[tag]
            actions.append((_tag_text(tag), "X"))
    for tag in list(file_meta.keys()):
        if ps315_table.BASIC_PROFILE.get(tag) == "U":
            _replace_uids(file_meta[tag], key)
            actions.append((_tag_text(tag), "U"))
    # We write the new file, so the implementation named is ours; the original
    # one's UID can equal an Instance Creator UID the profile replaces.
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = _IMPLEMENTATION_VERSION


def _resolved_action(tag: BaseTag, vr: str) -> str:
    """One of K, X, Z, D, U for the element (see the module docstring)."""
    group, element = tag >> 16, tag & 0xFFFF
    if tag.is_private or (element == 0 and group != 0x0002):
        return "X"
    if (group & 0xFF00) in (0x5000, 0x6000):
        return "X"

    action = ps315_table.BASIC_PROFILE.get(int(tag))
    if action is None:
        action = next(
            (a for mask, value, a in ps315_table.WILDCARD_RULES if tag & mask == value),
            None,
        )
    if action is None:
        return "K" if _known_tag(tag) else "X"

    if action == "X/Z/U*":
        return "K" if vr == "SQ" else "U" if vr == "UI" else "Z"
    if action == "C":
        return "D"
    if "/" not in action:
        return action
    if action.startswith("X") and int(tag) not in ps315_table.IN_STANDARD_IOD:
        return "X"
    return "Z" if action == "X/Z" else "D"


def _known_tag(tag: BaseTag) -> bool:
    if dictionary_has_tag(tag):
        return True
    try:  # repeating groups such as (60xx,...) are known through their mask
        get_entry(tag)
    except KeyError:
        return False
    return True


def _replace_uids(element: DataElement, key: bytes) -> None:
    if isinstance(element.value, MultiValue):
        element.value = [keyed_uid(str(uid), key) for uid in element.value if uid]
    elif element.value:
        element.value = UID(keyed_uid(str(element.value), key))


def _write_dummy(element: DataElement, key: bytes) -> None:
    vr = element.VR
    if not element.value and vr != "SQ":
        # Nothing to hide; an empty value of an attribute stays empty.
        return
    if element.tag == _PATIENT_ID:
        element.value = pseudonym_patient_id(str(element.value), key)
    elif vr == "PN":
        names = (
            element.value if isinstance(element.value, MultiValue) else [element.value]
        )
        pseudonyms = [pseudonym_person_name(str(name), key) for name in names]
        element.value = pseudonyms if len(pseudonyms) > 1 else pseudonyms[0]
    elif vr == "UI":
        _replace_uids(element, key)
    elif vr in _DUMMIES:
        element.value = _DUMMIES[vr]
    elif vr in _TEXT_VRS:
        element.value = _DUMMY_TEXT
    elif vr in _NUMBER_VRS:
        element.value = 0
    else:
        element.value = element.empty_value


def _walk_original(
    dataset: pydicom.Dataset, prefix: str = ""
) -> Iterator[tuple[str, DataElement, str]]:
    """(path, element, action) for the dataset, its items and its File Meta.

    Elements inside a removed or emptied sequence count as removed.
    """
    file_meta = getattr(dataset, "file_meta", None) if not prefix else None
    if file_meta is not None:
        for element in file_meta:
            removed = element.tag in _FILE_META_REMOVED or (
                ps315_table.BASIC_PROFILE.get(element.tag) == "U"
            )
            yield _tag_text(element.tag), element, "X" if removed else "K"
    yield from _walk_items(dataset, prefix, removed=False)


def _walk_items(
    dataset: pydicom.Dataset, prefix: str, *, removed: bool
) -> Iterator[tuple[str, DataElement, str]]:
    for element in dataset:
        path = prefix + _tag_text(element.tag)
        action = _resolved_action(element.tag, element.VR)
        if removed and action == "K":
            action = "X"
        yield path, element, action
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _walk_items(item, f"{path}[{index}].", removed=action != "K")


def _strings(element: DataElement) -> list[str]:
    """The element's values as upper-case strings (raw bytes for UN)."""
    vr = element.VR
    if vr == "UN" and isinstance(element.value, bytes):
        text = element.value.decode("latin-1").strip("\x00 ").upper()
        return [text] if text else []
    if vr not in _SEARCHED_VRS or element.value is None:
        return []
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    return [str(value).strip().upper() for value in values if str(value).strip()]


def _needles(value: str, vr: str) -> list[tuple[str, bool]]:
    """(needle, is the whole value): a name's components are needles too."""
    candidates = [(value, True)]
    if vr == "PN":
        candidates += [
            (part.strip(), False)
            for part in value.replace("=", "^").split("^")
            if len(part.strip()) > _MIN_NEEDLE
        ]
    return [(c, whole) for c, whole in candidates if _is_needle(c)]


def _is_needle(value: str) -> bool:
    if len(value) < _MIN_NEEDLE or value in _STANDARD_CODES:
        return False
    if value.replace(".", "").replace("-", "").replace("+", "").isdigit():
        if len(value) < _MIN_NUMERIC_NEEDLE:
            return False
        if PYDICOM_IMPLEMENTATION_UID.startswith(value):
            return False  # the implementation (or its root) we name as the writer
        if len(value) <= _MAX_UID and RE_VALID_UID.match(value):
            # A registered DICOM UID (a SOP class, a transfer syntax) is public.
            return UID(value).name == value
    return True


def _is_identifier(element: DataElement) -> bool:
    keyword = element.keyword
    return keyword.endswith(("ID", "IDs", "Number", "Numbers"))


def _haystack(dataset: pydicom.Dataset) -> Iterator[tuple[str, str]]:
    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        for element in file_meta:
            for value in _strings(element):
                yield _tag_text(element.tag), value
    for path, element in _walk_paths(dataset, ""):
        for value in _strings(element):
            yield path, value


def _walk_paths(
    dataset: pydicom.Dataset, prefix: str
) -> Iterator[tuple[str, DataElement]]:
    for element in dataset:
        path = prefix + _tag_text(element.tag)
        yield path, element
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _walk_paths(item, f"{path}[{index}].")


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
