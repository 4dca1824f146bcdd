"""The DICOM change events emitter against a real Orthanc and Azurite.

Given an instance stored in a tenant's archive, when the emitter polls, then a
DicomImageCreated event in the Event Grid schema lands on the events queue; when the
instance is deleted, a DicomImageDeleted follows; a restart repeats neither.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from azure.storage.queue import QueueClient, QueueServiceClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from localdev.dicom_events import (
    CREATED,
    DELETED,
    DicomEventEmitter,
    DicomService,
    services_from_app_env,
)


@pytest.fixture(scope="module")
def service(stack: dict[str, Any]) -> DicomService:
    return services_from_app_env(stack["app_env"])[0]


@pytest.fixture
def events_queue(stack: dict[str, Any]) -> Iterator[QueueClient]:
    """A private events queue, so the stack's own dicom-events stays untouched."""
    connection = stack["app_env"]["AzureWebJobsStorage"]
    queues = QueueServiceClient.from_connection_string(connection)
    queue = queues.get_queue_client(f"test-events-{uuid.uuid4().hex[:8]}")
    queue.create_queue()
    yield queue
    queue.delete_queue()


def store_instance(service: DicomService) -> tuple[str, tuple[str, str, str]]:
    """A synthetic CT with fresh UIDs; its Orthanc id and (study, series, SOP) UIDs."""
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "TEST0001"
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    response = requests.post(
        f"{service.orthanc_url}/instances",
        data=buffer.getvalue(),
        auth=(service.username, service.password),
        timeout=30,
    )
    response.raise_for_status()
    uids = (
        str(dataset.StudyInstanceUID),
        str(dataset.SeriesInstanceUID),
        str(dataset.SOPInstanceUID),
    )
    return response.json()["ID"], uids


def drain(queue: QueueClient) -> list[dict[str, Any]]:
    envelopes: list[dict[str, Any]] = []
    while True:
        batch = list(queue.receive_messages(max_messages=32, visibility_timeout=60))
        if not batch:
            return envelopes
        for message in batch:
            envelopes.append(json.loads(message.content))
            queue.delete_message(message)


def events_for(envelopes: list[dict[str, Any]], sop_uid: str) -> list[dict[str, Any]]:
    return [
        e["body"]
        for e in envelopes
        if e["body"]["data"]["imageSopInstanceUid"] == sop_uid
    ]


def test_created_and_deleted_instances_become_events(
    service: DicomService, events_queue: QueueClient, tmp_path: Path
) -> None:
    state = tmp_path / "events.sqlite"
    orthanc_id, (study_uid, series_uid, sop_uid) = store_instance(service)

    emitter = DicomEventEmitter([service], events_queue, state)
    emitter.poll_once()
    emitter.close()
    created = drain(events_queue)

    [event] = events_for(created, sop_uid)
    [envelope] = [e for e in created if e["body"]["id"] == event["id"]]
    assert envelope["message_id"] == event["id"]
    assert event["eventType"] == CREATED
    assert event["subject"] == (
        f"{service.service_host}/studies/{study_uid}"
        f"/series/{series_uid}/instances/{sop_uid}"
    )
    assert event["dataVersion"] == "1"
    assert event["metadataVersion"] == "1"
    assert event["data"]["partitionName"] == "Microsoft.Default"
    assert event["data"]["imageStudyInstanceUid"] == study_uid
    assert event["data"]["imageSeriesInstanceUid"] == series_uid
    assert event["data"]["serviceHostName"] == service.service_host
    numbers = [e["body"]["data"]["sequenceNumber"] for e in created]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(numbers)

    # A restart from the same checkpoints repeats nothing.
    emitter = DicomEventEmitter([service], events_queue, state)
    emitter.poll_once()
    assert events_for(drain(events_queue), sop_uid) == []

    requests.delete(
        f"{service.orthanc_url}/instances/{orthanc_id}",
        auth=(service.username, service.password),
        timeout=30,
    ).raise_for_status()
    emitter.poll_once()
    emitter.close()

    [deleted] = events_for(drain(events_queue), sop_uid)
    assert deleted["eventType"] == DELETED
    assert deleted["data"]["imageStudyInstanceUid"] == study_uid
    assert deleted["data"]["sequenceNumber"] > event["data"]["sequenceNumber"]
