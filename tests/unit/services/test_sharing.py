"""Sharing: request rules, instance-by-instance transfer, resumption, status access."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest

from shared_code.errors import RequestRejected, RetryLater
from shared_code.services import sharing
from tests.unit.services.test_archive import (
    MemoryArchive,
    MemoryState,
    dicom_bytes,
    make_settings,
)


class MemoryBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str]] = []

    def send(self, queue: str, body: Any, *, message_id: str) -> None:
        self.sent.append((queue, dict(body), message_id))


def two_instance_study() -> list[bytes]:
    """CT_small and a second instance of the same study and series."""
    first = dicom_bytes()
    second = pydicom.dcmread(io.BytesIO(first))
    second.SOPInstanceUID = second.SOPInstanceUID + ".2"
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID
    buffer = io.BytesIO()
    second.save_as(buffer)
    return [first, buffer.getvalue()]


@pytest.fixture
def world() -> dict[str, Any]:
    archives = {name: MemoryArchive() for name in ("trust-a", "trust-b", "research")}
    for part10 in two_instance_study():
        archives["trust-a"].store_instance(part10)
    return {
        "settings": make_settings(trust_a=("trust-b", "research")),
        "state": MemoryState(),
        "bus": MemoryBus(),
        "archives": archives,
        "study": pydicom.dcmread(io.BytesIO(dicom_bytes())).StudyInstanceUID,
    }


def request(world: dict[str, Any], **overrides: str) -> dict[str, Any]:
    args = {
        "principal_tenant": "trust-a",
        "study_uid": world["study"],
        "from_tenant": "trust-a",
        "to_tenant": "trust-b",
        **overrides,
    }
    return sharing.request_share(
        settings=world["settings"],
        state=world["state"],
        bus=world["bus"],
        archive_for=world["archives"].__getitem__,
        **args,
    )


def transfer(world: dict[str, Any], share_id: str) -> dict[str, Any]:
    return sharing.transfer_share(
        share_id,
        settings=world["settings"],
        state=world["state"],
        archive_for=world["archives"].__getitem__,
    )


def test_request_queues_one_share_and_deduplicates(world):
    share = request(world)
    again = request(world)

    assert share["status"] == "QUEUED"
    assert share["pk"] == share["id"]
    assert again["id"] == share["id"]
    # Asking again re-sends the same message id: a lost message cannot strand it.
    assert world["bus"].sent == [("shares", {"share_id": share["id"]}, share["id"])] * 2


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"principal_tenant": "trust-b"}, 403),
        ({"from_tenant": "trust-b", "principal_tenant": "trust-b"}, 403),
        ({"to_tenant": "nowhere"}, 404),
        ({"study_uid": "1.2.3.4"}, 404),
    ],
)
def test_request_rules(world, overrides, status):
    with pytest.raises(RequestRejected) as caught:
        request(world, **overrides)

    assert caught.value.status == status
    assert world["bus"].sent == []


def test_clinical_transfer_copies_every_instance(world):
    share = request(world)

    done = transfer(world, share["id"])

    assert (done["status"], done["total"], done["copied"], done["failed"]) == (
        "COMPLETE",
        2,
        2,
        0,
    )
    assert set(world["archives"]["trust-b"].instances) == set(
        world["archives"]["trust-a"].instances
    )


def test_redelivery_resumes_without_duplicating(world):
    share = request(world)
    destination = world["archives"]["trust-b"]
    original_store = destination.store_instance
    calls = {"n": 0}

    def fail_second(part10: bytes):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RetryLater("503")
        return original_store(part10)

    destination.store_instance = fail_second
    with pytest.raises(RetryLater):
        transfer(world, share["id"])
    midway = sharing.share_status(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        principal_tenant="trust-a",
    )

    done = transfer(world, share["id"])

    assert (midway["status"], midway["copied"]) == ("IN_PROGRESS", 1)
    assert (done["status"], done["copied"]) == ("COMPLETE", 2)
    assert destination.stores == 2


def test_research_transfer_stores_pseudonyms(world):
    share = request(world, to_tenant="research")

    done = transfer(world, share["id"])

    assert done["status"] == "COMPLETE"
    stored = set(world["archives"]["research"].instances)
    assert len(stored) == 2
    assert stored.isdisjoint(world["archives"]["trust-a"].instances)
    assert all(world["study"] not in str(entry) for entry in done["instances"].values())


def test_instance_failing_preparation_marks_share_failed(world, monkeypatch):
    monkeypatch.setattr(
        "shared_code.domain.deid.deidentify", lambda dataset, key, policy=None: None
    )
    share = request(world, to_tenant="research")

    done = transfer(world, share["id"])

    assert (done["status"], done["failed"], done["copied"]) == ("FAILED", 2, 0)
    assert {e["reason"] for e in done["instances"].values()} == {"deid_leak"}
    assert world["archives"]["research"].instances == {}


def test_status_is_hidden_from_other_tenants(world):
    share = request(world)

    seen_by_destination = sharing.share_status(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        principal_tenant="trust-b",
    )
    with pytest.raises(RequestRejected) as caught:
        sharing.share_status(
            share["id"],
            settings=world["settings"],
            state=world["state"],
            principal_tenant="research",
        )

    assert seen_by_destination["id"] == share["id"]
    assert caught.value.status == 404


def test_a_research_destination_never_sees_the_clinical_study_uid(world):
    share = request(world, to_tenant="research")
    transfer(world, share["id"])

    seen = sharing.share_status(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        principal_tenant="research",
    )

    assert seen["status"] == "COMPLETE"
    assert world["study"] not in str(seen)
    assert "instances" not in seen


@pytest.mark.parametrize("study_uid", ["", "1.2.abc", "1." + "2" * 70])
def test_a_share_of_something_that_is_no_uid_is_a_bad_request(world, study_uid):
    with pytest.raises(RequestRejected) as caught:
        request(world, study_uid=study_uid)

    assert caught.value.status == 400
