"""parse_dicom_event on Event Grid events shaped as AHDS DICOM sends them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from shared_code.domain.dicom_events import (
    IMAGE_CREATED,
    IMAGE_DELETED,
    IMAGE_UPDATED,
    event_time,
    parse_change_feed_entry,
    parse_dicom_event,
)
from shared_code.errors import NotSupported, Quarantine

STUDY_UID = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
SERIES_UID = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
SOP_UID = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


def _event(event_type: str = IMAGE_CREATED) -> dict[str, Any]:
    return {
        "id": "d621839d-958b-4142-a638-bb966b4f7dfd",
        "topic": "/subscriptions/0/resourceGroups/rg/providers/"
        "Microsoft.HealthcareApis/workspaces/ws",
        "subject": "ws-dicom.dicom.azurehealthcareapis.com/studies/x",
        "eventType": event_type,
        "eventTime": "2025-01-09T12:00:00.1234567Z",
        "dataVersion": "1",
        "data": {
            "partitionName": "Microsoft.Default",
            "imageStudyInstanceUid": STUDY_UID,
            "imageSeriesInstanceUid": SERIES_UID,
            "imageSopInstanceUid": SOP_UID,
            "serviceHostName": "ws-dicom.dicom.azurehealthcareapis.com",
            "sequenceNumber": 7,
        },
    }


@pytest.mark.parametrize("event_type", [IMAGE_CREATED, IMAGE_DELETED, IMAGE_UPDATED])
def test_given_an_image_event_when_parsed_then_every_field_is_kept(
    event_type: str,
) -> None:
    event = parse_dicom_event(_event(event_type))

    assert event.event_type == event_type
    assert event.event_id == "d621839d-958b-4142-a638-bb966b4f7dfd"
    assert event.partition_name == "Microsoft.Default"
    assert event.study_instance_uid == STUDY_UID
    assert event.series_instance_uid == SERIES_UID
    assert event.sop_instance_uid == SOP_UID
    assert event.service_host_name == "ws-dicom.dicom.azurehealthcareapis.com"
    assert event.sequence_number == 7
    assert event.extra["eventTime"] == "2025-01-09T12:00:00.1234567Z"


def test_given_a_batch_of_one_when_parsed_then_it_is_the_event() -> None:
    assert parse_dicom_event([_event()]) == parse_dicom_event(_event())


@pytest.mark.parametrize("body", [[], [_event(), _event()], "text", 42, [42]])
def test_given_no_single_event_object_then_it_is_malformed(body: Any) -> None:
    with pytest.raises(Quarantine) as caught:
        parse_dicom_event(body)
    assert caught.value.reason == "malformed_event"


@pytest.mark.parametrize("field", ["id", "eventType", "data"])
def test_given_an_envelope_field_missing_then_it_is_named(field: str) -> None:
    body = _event()
    del body[field]

    with pytest.raises(Quarantine) as caught:
        parse_dicom_event(body)

    assert caught.value.reason == "malformed_event"
    assert field in caught.value.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("imageStudyInstanceUid", None),
        ("imageStudyInstanceUid", "1.2.abc"),
        ("imageSeriesInstanceUid", "1.02.3"),
        ("imageSopInstanceUid", "1." + "2" * 70),
        ("serviceHostName", ""),
        ("partitionName", 5),
        ("sequenceNumber", "seven"),
        ("sequenceNumber", True),
        ("sequenceNumber", None),
    ],
)
def test_given_a_bad_data_field_then_it_is_named(field: str, value: Any) -> None:
    body = copy.deepcopy(_event())
    body["data"][field] = value

    with pytest.raises(Quarantine) as caught:
        parse_dicom_event(body)

    assert caught.value.reason == "malformed_event"
    assert field in caught.value.detail


def test_given_data_not_an_object_then_it_is_malformed() -> None:
    body = _event()
    body["data"] = "x"

    with pytest.raises(Quarantine, match="malformed_event"):
        parse_dicom_event(body)


def test_given_another_event_type_then_it_is_not_supported_by_name() -> None:
    body = _event("Microsoft.HealthcareApis.FhirResourceCreated")

    with pytest.raises(NotSupported) as caught:
        parse_dicom_event(body)

    assert caught.value.reason == "not_supported.dicom_event_type"
    assert "Microsoft.HealthcareApis.FhirResourceCreated" in caught.value.detail


def test_given_a_sequence_number_as_text_then_it_is_an_integer() -> None:
    body = _event()
    body["data"]["sequenceNumber"] = "12"

    assert parse_dicom_event(body).sequence_number == 12


# Event time and the change feed


def test_event_time_is_utc_with_seven_fraction_digits_accepted() -> None:
    event = parse_dicom_event(_event())

    assert event_time(event) == datetime(2025, 1, 9, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("value", [None, "", "yesterday", 5])
def test_an_unreadable_event_time_is_none(value: Any) -> None:
    body = _event()
    body["eventTime"] = value

    assert event_time(parse_dicom_event(body)) is None


def test_a_change_feed_entry_names_its_study_and_action() -> None:
    entry = {
        "Sequence": 12,
        "StudyInstanceUid": STUDY_UID,
        "SeriesInstanceUid": SERIES_UID,
        "SopInstanceUid": SOP_UID,
        "Action": "Delete",
        "Timestamp": "2025-01-09T12:00:00Z",
        "State": "Deleted",
    }

    change = parse_change_feed_entry(entry)

    assert (change.study_instance_uid, change.action, change.sequence) == (
        STUDY_UID,
        "delete",
        12,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("StudyInstanceUid", "1.2.x"), ("Action", "Move"), ("Sequence", "12")],
)
def test_a_malformed_change_is_named(field: str, value: Any) -> None:
    entry = {"Sequence": 1, "StudyInstanceUid": STUDY_UID, "Action": "Create"}
    entry[field] = value

    with pytest.raises(Quarantine) as caught:
        parse_change_feed_entry(entry)

    assert caught.value.reason == "malformed_change"
