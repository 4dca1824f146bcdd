"""Parsing the Event Grid events the DICOM service sends when its instances change.

AHDS DICOM publishes one event per instance created, updated or deleted
(``Microsoft.HealthcareApis.DicomImage*``) in the Event Grid schema; Event Grid puts
it on the ``dicom-events`` queue, sometimes as a one-element batch array.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from shared_code.errors import NotSupported, Quarantine
from shared_code.ports import ArchiveChange, DicomEvent

_log = logging.getLogger(__name__)

IMAGE_CREATED = "Microsoft.HealthcareApis.DicomImageCreated"
IMAGE_DELETED = "Microsoft.HealthcareApis.DicomImageDeleted"
IMAGE_UPDATED = "Microsoft.HealthcareApis.DicomImageUpdated"
EVENT_TYPES = frozenset({IMAGE_CREATED, IMAGE_DELETED, IMAGE_UPDATED})

# PS3.5 9.1: digits and dots, no leading zero in a component, at most 64 characters.
# The UIDs end up in FHIR search URLs, so a malformed one is refused here.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

_UID_FIELDS = {
    "imageStudyInstanceUid": "study_instance_uid",
    "imageSeriesInstanceUid": "series_instance_uid",
    "imageSopInstanceUid": "sop_instance_uid",
}
_TEXT_FIELDS = {
    "partitionName": "partition_name",
    "serviceHostName": "service_host_name",
}
_ENVELOPE = ("id", "eventType", "data")


def parse_dicom_event(
    body: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> DicomEvent:
    """One ``DicomEvent`` from a queued Event Grid event (or a batch of exactly one).

    Raises ``Quarantine('malformed_event', ...)`` naming what is wrong, and
    ``NotSupported`` for event types other than the DICOM image ones.
    """
    event = _single_event(body)

    missing = [name for name in _ENVELOPE if name not in event]
    if missing:
        raise Quarantine("malformed_event", f"missing {', '.join(missing)}")
    event_type = event["eventType"]
    if event_type not in EVENT_TYPES:
        raise NotSupported(
            "dicom_event_type",
            f"event type {str(event_type)[:120]!r} is not handled; subscribe the "
            f"queue to {', '.join(sorted(EVENT_TYPES))} only",
        )

    data = event["data"]
    if not isinstance(data, Mapping):
        raise Quarantine("malformed_event", "data is not an object")
    fields: dict[str, Any] = {}
    for source, target in {**_UID_FIELDS, **_TEXT_FIELDS}.items():
        fields[target] = _text(data, source)
    for source, target in _UID_FIELDS.items():
        if len(fields[target]) > 64 or not _UID.match(fields[target]):
            raise Quarantine("malformed_event", f"data.{source} is not a DICOM UID")
    fields["sequence_number"] = _sequence_number(data)

    extra = {
        key: event[key]
        for key in ("topic", "subject", "eventTime", "dataVersion")
        if key in event
    }
    return DicomEvent(
        event_type=event_type,
        event_id=str(event["id"]),
        extra=extra,
        **fields,
    )


def event_time(event: DicomEvent) -> datetime | None:
    """When the DICOM service raised the event (Event Grid ``eventTime``), in UTC;
    ``None`` when it is missing or unreadable, so the event is never skipped."""
    return parse_time(event.extra.get("eventTime"))


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 instant (Event Grid sends 7 fractional digits; Python keeps 6)."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# AHDS change feed actions (v2 API) and what they mean for FHIR sync.
CHANGE_ACTIONS = {"create": "create", "update": "update", "delete": "delete"}


def parse_change_feed_entry(entry: Mapping[str, Any]) -> ArchiveChange:
    """One entry of the AHDS DICOM v2 change feed (``Sequence``, ``StudyInstanceUid``,
    ``Action``, ...); a malformed one is ``Quarantine('malformed_change')``."""
    study_uid = entry.get("StudyInstanceUid")
    action = str(entry.get("Action", "")).lower()
    sequence = entry.get("Sequence")
    if not isinstance(study_uid, str) or not _UID.match(study_uid):
        raise Quarantine("malformed_change", "StudyInstanceUid is not a DICOM UID")
    if action not in CHANGE_ACTIONS:
        raise Quarantine("malformed_change", f"unknown Action {action[:40]!r}")
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        raise Quarantine("malformed_change", "Sequence is not an integer")
    return ArchiveChange(study_uid, CHANGE_ACTIONS[action], sequence)


def _single_event(body: Any) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    if isinstance(body, Sequence) and not isinstance(body, str | bytes):
        if len(body) != 1:
            raise Quarantine(
                "malformed_event",
                f"a batch of {len(body)} events; one event per message is expected",
            )
        if isinstance(body[0], Mapping):
            return body[0]
    raise Quarantine(
        "malformed_event", f"body is a {type(body).__name__}, not an event object"
    )


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Quarantine("malformed_event", f"data.{name} is missing or not a string")
    return value.strip()


def _sequence_number(data: Mapping[str, Any]) -> int:
    value = data.get("sequenceNumber")
    # bool is an int in Python; a JSON true is no sequence number.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Quarantine("malformed_event", "data.sequenceNumber is not an integer")
    try:
        return int(value)
    except ValueError:
        raise Quarantine(
            "malformed_event", "data.sequenceNumber is not an integer"
        ) from None
