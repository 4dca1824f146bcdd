"""The de-identification engine: PS3.15 Table E.1-1 and the chosen options applied
to every attribute at every nesting level, File Meta included, in place.

How each action is carried out:
- ``X`` removes the element, ``Z`` empties it, ``K`` keeps it (a kept sequence's
  items are de-identified in turn).
- ``U`` replaces each UID with ``keyed_uid`` (HMAC under 2.25), so every reference to
  a UID, at any level and in the File Meta, maps the same way in every process.
- ``D`` writes a dummy of the element's VR: Patient ID its keyed pseudonym, person
  names ``ANON^`` and an HMAC of the name, UIDs their keyed UID, dates 19000101,
  text ``ANONYMIZED``, numbers 0. A sequence to be given a dummy is emptied: a dummy
  item would need the sequence's macro, and its codes can identify.
- Patient's Name (``Z``) gets a pseudonym keyed on the Patient ID instead of an empty
  value, so one patient's instances stay linkable under one key.
- Conditionals keep the output valid without knowing the IOD: an attribute the
  table marks as in no standard composite IOD is removed when ``X`` is offered;
  otherwise ``X/Z`` empties it and ``X/D``, ``Z/D``, ``X/Z/D`` write a dummy (valid
  for Type 1 and 2 alike). ``X/Z/U*`` keeps a sequence and maps UIDs.
- ``C`` (an option's clean): dates move back by the patient's keyed shift
  (Modified Dates), UIDs map, names become pseudonyms, sequences are kept and their
  items cleaned, and text has every identifying value of the instance (names, IDs,
  dates, addresses the profile removes) cut out. Inside a cleaned sequence, kept
  text is cleaned the same way (SR Text Value, graphic text objects).
- Private elements are removed, or with Retain Safe Private kept only when their
  (private creator, element) is on the policy's allow-list. Group lengths, unknown
  public elements, whole overlay (60xx) and curve (50xx) groups are removed: an
  overlay bitmap cannot be cleaned, and the rest of its plane is invalid without it.
- Pixels are not cleaned: an instance whose pixels may carry burned-in text is
  quarantined, or flagged in De-identification Method, as the policy says.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from functools import lru_cache

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_VR, get_entry
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from shared_code.domain.deid import table
from shared_code.domain.deid.policy import (
    BASIC_PROFILE,
    CODE_MEANINGS,
    RETAIN_LONGITUDINAL_FULL_DATES,
    RETAIN_LONGITUDINAL_MODIFIED_DATES,
    DeidPolicy,
    SafePrivate,
)
from shared_code.domain.deid.pseudonyms import (
    date_shift_days,
    keyed_uid,
    patient_id_pseudonym,
    patient_name_pseudonym,
    person_name_pseudonym,
    shift_date,
    shift_datetime,
)
from shared_code.domain.deid.report import DeidReport
from shared_code.errors import Quarantine

_log = logging.getLogger(__name__)

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_FILE_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
_IMPLEMENTATION_VERSION = "DCMEXCH_DEID_2"
_DUMMY_TEXT = "ANONYMIZED"
_CUT_TEXT = "[REMOVED]"
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
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"})
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
# VRs whose raw bytes are emptied or mapped in place: explicit, not UN (which
# pydicom would read as the dictionary VR) and not a sequence.
_RAW_VRS = (
    _TEXT_VRS | _NUMBER_VRS | {"PN", "UI", "DA", "DT", "TM", "AS", "IS", "DS"}
) - {"UN"}
_MIN_CUT = 3
_PRIVATE_BIT = 0x10000  # odd groups are private
_PEEK_VRS = frozenset({None, "UN", "CS", "UI", "LO"})


def _padded(text: str, pad: bytes) -> bytes:
    """ASCII text padded to an even length, as DICOM encodes it."""
    value = text.encode("ascii")
    return value + pad * (len(value) % 2)


# The dummies of _write_dummy as pydicom encodes them, for the VRs that are text.
_RAW_DUMMIES: dict[str, bytes] = {
    vr: _padded(text, b" ")
    for vr, text in [
        *((vr, _DUMMY_TEXT) for vr in _TEXT_VRS),
        *((vr, dummy) for vr, dummy in _DUMMIES.items() if isinstance(dummy, str)),
    ]
}
_IMPLEMENTATION = tuple(
    RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)
    for tag, vr, value in [
        (0x00020012, "UI", _padded(PYDICOM_IMPLEMENTATION_UID, b"\0")),
        (0x00020013, "SH", _padded(_IMPLEMENTATION_VERSION, b" ")),
    ]
)
# Modalities and SOP classes whose pixels often carry burned-in text when Burned In
# Annotation is absent: ultrasound, secondary and screen captures, angiography,
# other, and dose reports.
_BURNED_IN_MODALITIES = frozenset({"US", "SC", "XA", "OT"})
_BURNED_IN_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture and its multi-frame kinds
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.73",  # Patient Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
)
_FLAG_TEXT = "PIXELS NOT CLEANED: BURNED-IN TEXT POSSIBLE"


def deidentify(
    dataset: pydicom.Dataset, key: bytes, policy: DeidPolicy | None = None
) -> DeidReport:
    """De-identify ``dataset`` in place under ``policy`` (Basic Profile by default).

    Raises ``Quarantine("deid_burned_in", ...)`` first, before any change, when the
    pixels may carry burned-in text and the policy quarantines such instances.
    """
    if not key:
        raise ValueError("a pseudonymisation key is required")
    policy = policy or DeidPolicy()
    report = DeidReport(table.EDITION, tuple(sorted(policy.options)))
    reason = burned_in_risk(dataset)
    if reason:
        if policy.burned_in == "quarantine":
            raise Quarantine("deid_burned_in", reason)
        report.burned_in_risk, report.burned_in_reason = True, reason

    _Run(dataset, key, policy, report).apply()
    return report


def burned_in_risk(dataset: pydicom.Dataset) -> str:
    """Why the instance's pixels may carry burned-in text, or "" when not known to."""
    burned_in = str(_peek(dataset, 0x00280301) or "").strip().upper()
    if burned_in == "YES":
        return "Burned In Annotation is YES"
    if burned_in:
        return ""
    modality = str(_peek(dataset, 0x00080060) or "").strip().upper()
    if modality in _BURNED_IN_MODALITIES:
        return f"Burned In Annotation absent on modality {modality}"
    sop_class = str(_peek(dataset, 0x00080016) or "")
    if sop_class.startswith(_BURNED_IN_SOP_CLASS_PREFIXES):
        return "Burned In Annotation absent on a capture or dose report SOP class"
    return ""


class _Run:
    """One instance's de-identification; holds what the steps share."""

    def __init__(
        self,
        dataset: pydicom.Dataset,
        key: bytes,
        policy: DeidPolicy,
        report: DeidReport,
    ) -> None:
        self.dataset = dataset
        self.key = key
        self.policy = policy
        self.report = report
        self.resolve = _resolver(policy)
        patient_id = str(_peek(dataset, _PATIENT_ID) or "")
        self.patient_id = patient_id
        self.shift_days = date_shift_days(patient_id, key)
        self._cuts: re.Pattern[str] | None = None

    def apply(self) -> None:
        self._items(self.dataset, "", cleaning=False)
        file_meta = getattr(self.dataset, "file_meta", None)
        if file_meta is not None:
            self._file_meta(file_meta)
        if getattr(self.dataset, "preamble", None) is not None:
            self.dataset.preamble = b"\x00" * 128
        self._record()

    def _items(self, dataset: pydicom.Dataset, prefix: str, *, cleaning: bool) -> None:
        # items() gives the elements as held, raw ones not decoded.
        elements = list(dataset.items())
        private = [tag for tag, _ in elements if tag & _PRIVATE_BIT]
        if private:
            self._private(dataset, private, prefix)
        for tag, held in elements:
            if tag & _PRIVATE_BIT:
                continue
            action, rule, is_sq = self.resolve(tag)
            if action == "K":
                if is_sq or held.VR == "SQ":
                    self._kept_sequence(dataset, tag, held, prefix, cleaning)
                elif cleaning:
                    self._clean_kept_text(dataset, tag, prefix)
                continue

            path = prefix + _tag_text(tag)
            if action == "X":
                del dataset[tag]
            elif action == "C":
                action = self._clean(dataset[tag], prefix)
            else:
                fast = _replace_raw(dataset, held, action, prefix, self)
                action = fast or self._replace(dataset[tag], action, prefix)
            self.report.add(path, rule, action)

    def _kept_sequence(
        self,
        dataset: pydicom.Dataset,
        tag: BaseTag,
        held: DataElement | RawDataElement,
        prefix: str,
        cleaning: bool,
    ) -> None:
        changes = len(self.report.entries)
        self._sequence(dataset[tag], prefix, cleaning=cleaning)
        if held.is_raw and len(self.report.entries) == changes:
            # Nothing in it changed (every change is reported): the bytes as read
            # are written back, which spares pydicom encoding each item again.
            dataset[tag] = held

    def _replace(self, element: DataElement, action: str, prefix: str) -> str:
        vr = element.VR
        if action == "U*":  # X/Z/U*: keep a sequence, map UIDs, empty the rest
            if vr == "SQ":
                self._sequence(element, prefix, cleaning=False)
                return "K"
            action = "U" if vr == "UI" else "Z"
        if action == "U" or (action == "D" and vr == "UI"):
            self._map_uids(element)
            return "U"
        if element.tag == _PATIENT_NAME and not prefix and action in ("Z", "D"):
            element.value = patient_name_pseudonym(self.patient_id, self.key)
            return "D"
        if action == "Z" or vr == "SQ":
            element.value = element.empty_value
            return "Z"
        self._write_dummy(element)
        return "D"

    def _sequence(self, element: DataElement, prefix: str, *, cleaning: bool) -> None:
        path = prefix + _tag_text(element.tag)
        for index, item in enumerate(element.value or ()):
            self._items(item, f"{path}[{index}].", cleaning=cleaning)

    def _clean(self, element: DataElement, prefix: str) -> str:
        vr, value = element.VR, element.value
        if vr == "SQ":
            self._sequence(element, prefix, cleaning=True)
        elif vr in ("DA", "DT"):
            self._shift_dates(element)
        elif vr == "UI":
            self._map_uids(element)
        elif vr == "PN" and value:
            element.value = _each(value, lambda name: self._name(name))
        elif vr in _FREE_TEXT_VRS and value:
            element.value = _each(value, self._cut)
        return "C"

    def _clean_kept_text(self, dataset: pydicom.Dataset, tag: int, prefix: str) -> None:
        vr = dataset.get_item(tag).VR or dictionary_VR(tag)
        if vr not in _FREE_TEXT_VRS and vr != "PN":
            return
        element = dataset[tag]
        if not element.value:
            return
        before = element.value
        if element.VR == "PN":
            element.value = _each(before, lambda name: self._name(name))
        else:
            element.value = _each(before, self._cut)
        if element.value != before:
            self.report.add(prefix + _tag_text(tag), "cleaned-content", "C")

    def _shift_dates(self, element: DataElement) -> None:
        if not element.value:
            return
        if RETAIN_LONGITUDINAL_MODIFIED_DATES not in self.policy.options:
            element.value = element.empty_value
            return
        shift = shift_date if element.VR == "DA" else shift_datetime
        shifted = [shift(str(v), self.shift_days) for v in _values(element.value)]
        kept = [value for value in shifted if value]
        element.value = kept if len(kept) > 1 else (kept[0] if kept else "")

    def _map_uids(self, element: DataElement) -> None:
        if isinstance(element.value, MultiValue):
            element.value = [keyed_uid(str(uid), self.key) for uid in element.value]
        elif element.value:
            element.value = UID(keyed_uid(str(element.value), self.key))

    def _write_dummy(self, element: DataElement) -> None:
        vr = element.VR
        if not element.value:
            return  # nothing to hide; an empty value stays empty
        if element.tag == _PATIENT_ID:
            element.value = patient_id_pseudonym(str(element.value), self.key)
        elif vr == "PN":
            element.value = _each(element.value, self._name)
        elif vr in _DUMMIES:
            element.value = _DUMMIES[vr]
        elif vr in _TEXT_VRS:
            element.value = _DUMMY_TEXT
        elif vr in _NUMBER_VRS:
            element.value = 0
        else:
            element.value = element.empty_value

    def _name(self, name: str) -> str:
        return person_name_pseudonym(str(name), self.key)

    def _cut(self, text: str) -> str:
        if self._cuts is None:
            self._cuts = _cut_pattern(self.dataset, self.resolve)
        return self._cuts.sub(_CUT_TEXT, str(text)) if self._cuts.pattern else text

    def _private(self, dataset: pydicom.Dataset, tags: list, prefix: str) -> None:
        keep: set[int] = set()
        if table.private_action(self.policy) == "C" and self.policy.safe_private:
            keep = _safe_private_tags(dataset, tags, self.policy.safe_private)
        for tag in tags:
            path = prefix + _tag_text(tag)
            if tag in keep:
                self.report.add(path, "safe-private", "K")
            else:
                del dataset[tag]
                self.report.add(path, "private", "X")

    def _file_meta(self, file_meta: pydicom.Dataset) -> None:
        for tag in _FILE_META_REMOVED:
            if tag in file_meta:
                del file_meta[tag]
                self.report.add(_tag_text(tag), "file-meta", "X")
        for tag, held in list(file_meta.items()):
            action, rule, _ = self.resolve(tag)
            if action == "U":
                if not _replace_raw(file_meta, held, action, "", self):
                    self._map_uids(file_meta[tag])
                self.report.add(_tag_text(tag), rule, "U")
        # We write the new file, so the implementation named is ours; the original
        # one's UID can equal an Instance Creator UID the profile replaces.
        for element in _IMPLEMENTATION:
            file_meta[element.tag] = element

    def _record(self) -> None:
        dataset, options = self.dataset, tuple(sorted(self.policy.options))
        implicit_vr, little_endian = dataset.original_encoding
        if implicit_vr is None or little_endian is None:
            _record(dataset, options, self.report.burned_in_risk)
            return
        # Encoded once per policy and encoding: building the code items anew for
        # each instance costs more than all the rest of the record.
        flagged = self.report.burned_in_risk
        for element in _encoded_record(options, flagged, implicit_vr, little_endian):
            dataset[element.tag] = element


@lru_cache(maxsize=64)
def _encoded_record(
    options: tuple[str, ...], flagged: bool, implicit_vr: bool, little_endian: bool
) -> tuple[RawDataElement, ...]:
    """The record's elements as raw elements in the given encoding."""
    record = pydicom.Dataset()
    _record(record, options, flagged)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit_vr, little_endian
    write_dataset(buffer, record)
    encoded = read_dataset(io.BytesIO(buffer.getvalue()), implicit_vr, little_endian)
    return tuple(
        element for _, element in encoded.items() if isinstance(element, RawDataElement)
    )


def _record(dataset: pydicom.Dataset, options: tuple[str, ...], flagged: bool) -> None:
    """Record what was done, in the attributes PS3.15 E.1.1 names."""
    dataset.PatientIdentityRemoved = "YES"
    method = [f"DICOM Exchange PS3.15 E.1-1 {table.EDITION}"]
    if flagged:
        method.append(_FLAG_TEXT)
    dataset.DeidentificationMethod = method if len(method) > 1 else method[0]
    codes = []
    # Pixels are never cleaned here, so the pixel options are never claimed.
    for code in [BASIC_PROFILE, *options]:
        if code in ("113101", "113102"):
            continue
        item = pydicom.Dataset()
        item.CodeValue, item.CodingSchemeDesignator = code, "DCM"
        item.CodeMeaning = CODE_MEANINGS[code]
        codes.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(codes)
    if RETAIN_LONGITUDINAL_FULL_DATES in options:
        dataset.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        dataset.LongitudinalTemporalInformationModified = "REMOVED"


def _replace_raw(
    dataset: pydicom.Dataset,
    raw: DataElement | RawDataElement,
    action: str,
    prefix: str,
    run: _Run,
) -> str:
    """Empty an element, map its UIDs or write its dummy on the raw bytes, without
    decoding the value; "" when the element needs the decoded path
    (``_Run._replace``).

    The bytes written are those pydicom would encode for the same value.
    """
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return ""
    tag = raw.tag
    # An implicit VR element takes the dictionary VR, as pydicom would give it.
    vr = raw.VR or _dictionary_vr(tag)
    if vr == "SQ" and action in ("Z", "D"):
        dataset[tag] = raw._replace(VR=vr, value=b"", length=0)
        return "Z"
    if vr not in _RAW_VRS:
        return ""
    if tag == _PATIENT_NAME and not prefix and action in ("Z", "D"):
        value = _padded(patient_name_pseudonym(run.patient_id, run.key), b" ")
        dataset[tag] = raw._replace(VR=vr, value=value, length=len(value))
        return "D"
    if action == "Z":
        dataset[tag] = raw._replace(VR=vr, value=b"", length=0)
        return "Z"
    if action in ("U", "D", "U*") and vr == "UI":
        text = raw.value.decode("latin-1").rstrip("\0 ")
        if not text:
            return "U"  # an empty UID stays empty
        # One value maps as is; several map one by one, empty ones included.
        uids = "\\".join(keyed_uid(uid, run.key) for uid in text.split("\\"))
        value = uids.encode("ascii")
        if len(value) % 2:
            value += b"\0"
        dataset[tag] = raw._replace(VR=vr, value=value, length=len(value))
        return "U"
    if action == "D" and tag == _PATIENT_ID and vr == "LO":
        patient_id = _ascii_value(raw)
        if patient_id is None:
            return ""
        if patient_id:  # an empty value stays empty
            value = _padded(patient_id_pseudonym(patient_id, run.key), b" ")
            dataset[tag] = raw._replace(VR=vr, value=value, length=len(value))
        return "D"
    if action == "D" and vr in _RAW_DUMMIES and tag != _PATIENT_ID:
        if not raw.value:
            return "D"  # nothing to hide; an empty value stays empty
        if not raw.value.strip(b" \0"):
            return ""  # padding only: its decoded value decides
        value = _RAW_DUMMIES[vr]
        dataset[tag] = raw._replace(VR=vr, value=value, length=len(value))
        return "D"
    return ""


_Resolver = Callable[[int], tuple[str, str, bool]]


@lru_cache(maxsize=64)
def _resolver(policy: DeidPolicy) -> _Resolver:
    """A cached tag -> (action, rule, dictionary VR is SQ) for one policy.

    The action is one of K, X, Z, D, U, C or U* (X/Z/U*, decided by the VR).
    """
    cache: dict[int, tuple[str, str, bool]] = {}

    def resolve(tag: int) -> tuple[str, str, bool]:
        # A plain int key: BaseTag's own __eq__ makes dict look-ups slow.
        key = int(tag)
        found = cache.get(key)
        if found is None:
            found = cache[key] = _resolve(key, policy)
        return found

    return resolve


def _resolve(tag: int, policy: DeidPolicy) -> tuple[str, str, bool]:
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0 and group != 0x0002:
        return "X", "group-length", False
    if (group & 0xFF00) == 0x6000:
        return "X", "overlay", False
    if (group & 0xFF00) == 0x5000:
        return "X", "curve", False
    is_sq = _dictionary_vr(tag) == "SQ"

    found = table.table_action(tag, policy)
    if found is None:
        if _known_tag(tag):
            return "K", table.BASIC, is_sq
        return "X", "unknown-public", False
    action, rule = found
    if action == "X/Z/U*":
        return "U*", rule, is_sq
    if "/" not in action:
        return action, rule, is_sq
    if action.startswith("X") and not table.in_standard_iod(tag):
        return "X", rule, is_sq
    return ("Z" if action == "X/Z" else "D"), rule, is_sq


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def _known_tag(tag: int) -> bool:
    if dictionary_has_tag(tag):
        return True
    try:  # repeating groups are known through their mask
        get_entry(tag)
    except KeyError:
        return False
    return True


def _safe_private_tags(
    dataset: pydicom.Dataset, tags: list, allowed: frozenset[SafePrivate]
) -> set[int]:
    """The private tags on the allow-list, with the creator elements they need."""
    creators: dict[tuple[int, int], str] = {}
    for tag in tags:
        if 0x0010 <= tag.element <= 0x00FF:
            value = dataset[tag].value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            creators[(tag.group, tag.element)] = text.strip(" \x00")
    keep: set[int] = set()
    for tag in tags:
        if tag.element < 0x1000:
            continue
        creator = creators.get((tag.group, tag.element >> 8))
        if creator and SafePrivate(creator, tag.element & 0xFF) in allowed:
            keep.add(tag)
            keep.add((tag.group << 16) | (tag.element >> 8))
    return keep


def _cut_pattern(dataset: pydicom.Dataset, resolve: _Resolver) -> re.Pattern[str]:
    """A case-blind pattern of the identifying text the profile removes: names (and
    their components), IDs, dates, addresses, anywhere in the dataset."""
    found: set[str] = set()
    _collect_identifying(dataset, resolve, found)
    words = sorted((w for w in found if len(w) >= _MIN_CUT), key=len, reverse=True)
    return re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)


def _collect_identifying(
    dataset: pydicom.Dataset, resolve: _Resolver, found: set[str]
) -> None:
    for element in dataset:
        if element.tag.group & 1:
            continue
        action, _, _ = resolve(element.tag)
        if element.VR == "SQ":
            for item in element.value or ():
                _collect_identifying(item, resolve, found)
            continue
        kept = action in ("K", "C", "U", "U*") or element.VR not in _TEXT_VRS
        if kept and element.VR != "PN":
            continue
        for value in _values(element.value):
            text = str(value).strip()
            found.add(text)
            if element.VR == "PN":
                found.update(p.strip() for p in re.split(r"[\^=]", text))


def _values(value: object) -> list[object]:
    if isinstance(value, MultiValue | list):
        return list(value)
    return [] if value in (None, "") else [value]


def _each(value: object, change: Callable[[str], str]) -> object:
    changed = [change(str(v)) for v in _values(value)]
    return changed if len(changed) > 1 else (changed[0] if changed else value)


def _tags(dataset: pydicom.Dataset) -> list[BaseTag]:
    # Iterating a Dataset converts every raw element; its keys do not.
    return list(dataset.keys())


def _peek(dataset: pydicom.Dataset, tag: int) -> object:
    """An element's value, the element left as read: a raw element that stays raw
    is written back as its bytes, not encoded again."""
    held = dataset.get_item(tag)
    if held is None:
        return ""
    if isinstance(held, RawDataElement) and held.VR in _PEEK_VRS:
        text = _ascii_value(held)
        if text is not None:
            return text
    value = dataset[tag].value
    if isinstance(held, RawDataElement):
        dataset[tag] = held
    return value


def _ascii_value(raw: RawDataElement) -> str | None:
    """A raw element's single text value as pydicom decodes it, or None unless it
    is one ASCII value without escapes (read the same in every character set:
    decoding comes down to stripping the padding)."""
    value = raw.value
    if value is None or not value.isascii() or b"\\" in value or b"\x1b" in value:
        return None
    return value.decode("ascii").rstrip(" \0")


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
