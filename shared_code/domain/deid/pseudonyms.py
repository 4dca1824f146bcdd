"""Stateless keyed pseudonyms: the same input and key give the same output in every
process, upload and host, with no mapping table to store or lose.

Each is an HMAC-SHA256 under the tenant's (or project's) secret, with a distinct
label per kind of value so a UID and an ID with the same text map apart.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging

_log = logging.getLogger(__name__)

MAX_DATE_SHIFT_DAYS = 3650


def keyed_uid(uid: str, key: bytes) -> str:
    """A UID under 2.25 derived from ``uid`` with an HMAC-SHA256 keyed by ``key``."""
    digest = hmac.new(key, uid.encode("ascii"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def patient_id_pseudonym(patient_id: str, key: bytes) -> str:
    """The Patient ID pseudonym: 16 hex digits of HMAC-SHA256(key, ID)."""
    return hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:16]


def person_name_pseudonym(name: str, key: bytes) -> str:
    """A person name pseudonym: ANON^ and 8 hex digits of HMAC-SHA256(key, name)."""
    return "ANON^" + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:8]


def patient_name_pseudonym(patient_id: str, key: bytes) -> str:
    """The Patient's Name pseudonym, derived from the Patient ID so that every
    instance of one patient gets the same name whatever spelling it arrived with."""
    digest = _labelled(key, b"patient-name", patient_id)
    return "ANON^" + digest.hex()[:12].upper()


def date_shift_days(patient_id: str, key: bytes) -> int:
    """Days (1..MAX_DATE_SHIFT_DAYS) that one patient's dates move back."""
    digest = _labelled(key, b"date-shift", patient_id)
    return 1 + int.from_bytes(digest[:8], "big") % MAX_DATE_SHIFT_DAYS


def shift_date(value: str, days: int) -> str | None:
    """A DA value (YYYYMMDD) moved back by ``days``; None when it is no such date."""
    try:
        date = datetime.datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
    shifted = date - datetime.timedelta(days=days)
    if shifted.year < 1:
        return None
    return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}"


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value's date part moved back by ``days``; the time of day is kept."""
    text = value.strip()
    date = shift_date(text[:8], days) if len(text) >= 8 else None
    return None if date is None else date + text[8:]


def _labelled(key: bytes, label: bytes, value: str) -> bytes:
    return hmac.new(key, label + b"\x00" + value.encode(), hashlib.sha256).digest()
