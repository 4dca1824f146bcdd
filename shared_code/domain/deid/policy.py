"""De-identification policy: the PS3.15 options chosen (CID 7050) and what to do
with instances whose pixels may carry burned-in text."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

_log = logging.getLogger(__name__)

BASIC_PROFILE = "113100"
CLEAN_PIXEL_DATA = "113101"
CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "113102"
CLEAN_GRAPHICS = "113103"
CLEAN_STRUCTURED_CONTENT = "113104"
CLEAN_DESCRIPTORS = "113105"
RETAIN_LONGITUDINAL_FULL_DATES = "113106"
RETAIN_LONGITUDINAL_MODIFIED_DATES = "113107"
RETAIN_PATIENT_CHARACTERISTICS = "113108"
RETAIN_DEVICE_IDENTITY = "113109"
RETAIN_UIDS = "113110"
RETAIN_SAFE_PRIVATE = "113111"
RETAIN_INSTITUTION_IDENTITY = "113112"

# CID 7050 code -> code meaning (PS3.16).
CODE_MEANINGS: dict[str, str] = {
    BASIC_PROFILE: "Basic Application Confidentiality Profile",
    CLEAN_PIXEL_DATA: "Clean Pixel Data Option",
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES: "Clean Recognizable Visual Features Option",
    CLEAN_GRAPHICS: "Clean Graphics Option",
    CLEAN_STRUCTURED_CONTENT: "Clean Structured Content Option",
    CLEAN_DESCRIPTORS: "Clean Descriptors Option",
    RETAIN_LONGITUDINAL_FULL_DATES: (
        "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    RETAIN_PATIENT_CHARACTERISTICS: "Retain Patient Characteristics Option",
    RETAIN_DEVICE_IDENTITY: "Retain Device Identity Option",
    RETAIN_UIDS: "Retain UIDs Option",
    RETAIN_SAFE_PRIVATE: "Retain Safe Private Option",
    RETAIN_INSTITUTION_IDENTITY: "Retain Institution Identity Option",
}

BurnedIn = Literal["quarantine", "flag"]


class PolicyError(ValueError):
    """An option code or name that CID 7050 does not define, or options that clash."""


@dataclass(frozen=True)
class SafePrivate:
    """One private element a Retain Safe Private policy keeps: the private creator
    and the element's low byte (``0x10`` for (gggg,xx10))."""

    creator: str
    element: int


@dataclass(frozen=True)
class DeidPolicy:
    """The options applied on top of the Basic Profile, and the burned-in outcome."""

    options: frozenset[str] = frozenset()
    safe_private: frozenset[SafePrivate] = frozenset()
    burned_in: BurnedIn = "quarantine"

    def __post_init__(self) -> None:
        unknown = self.options - CODE_MEANINGS.keys() | (self.options & {BASIC_PROFILE})
        if unknown:
            raise PolicyError(f"not a CID 7050 option code: {sorted(unknown)}")
        dates = {RETAIN_LONGITUDINAL_FULL_DATES, RETAIN_LONGITUDINAL_MODIFIED_DATES}
        if dates <= self.options:
            raise PolicyError("choose full dates or modified dates, not both")

    def has(self, code: str) -> bool:
        return code in self.options


def parse_options(values: Iterable[str]) -> frozenset[str]:
    """CID 7050 codes from codes ("113110") or code meanings ("Retain UIDs [Option]"),
    case and spacing ignored; the Basic Profile itself is implied and dropped."""
    by_name = {
        _normalised(meaning).removesuffix("option"): code
        for code, meaning in CODE_MEANINGS.items()
    }
    codes = set()
    for value in values:
        text = value.strip()
        if text in CODE_MEANINGS:
            code = text
        else:
            found = by_name.get(_normalised(text).removesuffix("option"))
            if found is None:
                raise PolicyError(f"not a CID 7050 option: {value!r}")
            code = found
        if code != BASIC_PROFILE:
            codes.add(code)
    return frozenset(codes)


def parse_safe_private(values: Iterable[str]) -> frozenset[SafePrivate]:
    """Allow-list entries written ``CREATOR:EE`` (EE the element's low byte, hex)."""
    entries = set()
    for value in values:
        creator, sep, element = value.rpartition(":")
        try:
            low = int(element, 16)
        except ValueError:
            low = -1
        if not sep or not creator.strip() or not 0 <= low <= 0xFF:
            raise PolicyError(f"safe private entry must be CREATOR:EE, not {value!r}")
        entries.add(SafePrivate(creator.strip(), low))
    return frozenset(entries)


def _normalised(text: str) -> str:
    return "".join(text.lower().split())


def build_policy(
    options: Iterable[str], safe_private: Iterable[str], burned_in: str
) -> DeidPolicy:
    """A policy from settings' text; raises ``PolicyError`` naming what is wrong."""
    if burned_in not in ("quarantine", "flag"):
        raise PolicyError(f"burned-in outcome must be quarantine or flag: {burned_in}")
    return DeidPolicy(
        options=parse_options(options),
        safe_private=parse_safe_private(safe_private),
        burned_in=burned_in,  # type: ignore[arg-type]
    )
