"""Ingest against real Azurite blobs and queues and a real SQLite state store.

The containers and the queue carry a per-test prefix, so the local host of the
end-to-end tests, polling the real names, never takes these messages.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient
from pydicom.data import get_testdata_file

from shared_code.adapters.blob_storage import blob_store_from_settings
from shared_code.adapters.bus import StorageQueueBus
from shared_code.adapters.state_sqlite import SqliteStateStore
from shared_code.config import Limits, Settings, load_settings
from shared_code.errors import RetryLater
from shared_code.services.audit import trail
from shared_code.services.ingest import UNKNOWN_TENANT, ingest_upload

CT_SMALL = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
MR_SMALL = Path(get_testdata_file("MR_small.dcm")).read_bytes()  # type: ignore[arg-type]


@pytest.fixture
def settings(stack: dict[str, Any], tmp_path: Path) -> Settings:
    prefix = f"it{uuid.uuid4().hex[:8]}"
    base = load_settings(
        {**stack["app_env"], "EXCHANGE_SQLITE_PATH": str(tmp_path / "state.db")}
    )
    return dataclasses.replace(
        base,
        uploads_container=f"{prefix}-uploads",
        instances_container=f"{prefix}-instances",
        quarantine_container=f"{prefix}-quarantine",
        instances_queue=f"{prefix}-instances",
        limits=Limits(max_upload_bytes=5_000_000, max_zip_members=50),
    )


@pytest.fixture
def ports(settings: Settings) -> dict[str, Any]:
    return {
        "blobs": blob_store_from_settings(
            connection_string=settings.storage_connection
        ),
        "bus": StorageQueueBus(settings.storage_connection),
        "state": SqliteStateStore(settings.sqlite_path),
    }


def _upload(
    settings: Settings, ports: dict[str, Any], tenant: str, name: str, data: bytes
) -> Any:
    ports["blobs"].write(settings.uploads_container, f"{tenant}/{name}", data)
    return ingest_upload(
        f"{settings.uploads_container}/{tenant}/{name}", settings=settings, **ports
    )


def _messages(settings: Settings) -> list[dict[str, Any]]:
    queue = QueueClient.from_connection_string(
        settings.storage_connection, settings.instances_queue
    )
    try:
        return [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]
    except ResourceNotFoundError:  # nothing was ever sent: the bus creates on send
        return []


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_is_staged_member_by_member_and_the_bad_member_quarantined(
    settings: Settings, ports: dict[str, Any]
) -> None:
    data = _zip(
        {
            "study/ct/1.dcm": CT_SMALL,
            "study/mr/1.dcm": MR_SMALL,
            "study/letter.txt": b"not an image" * 100,
        }
    )

    outcome = _upload(settings, ports, "trust-a", "batch/study.zip", data)

    assert outcome.outcome == "partially_accepted"
    assert len(outcome.staged) == 2
    assert [q["reason"] for q in outcome.quarantined] == ["not_dicom"]
    staged = ports["blobs"].list_names(settings.instances_container, "trust-a/")
    assert sorted(staged) == sorted(outcome.staged)
    messages = _messages(settings)
    assert sorted(m["body"]["blob"] for m in messages) == sorted(outcome.staged)
    assert {m["message_id"] for m in messages} == {
        f"trust-a:{m['body']['sha256']}" for m in messages
    }
    reason = json.loads(
        ports["blobs"].read(
            settings.quarantine_container,
            outcome.quarantined[0]["blob"] + ".reason.json",
        )
    )
    assert reason["reason"] == "not_dicom"
    assert reason["source"].endswith("#study/letter.txt")


def test_the_upload_is_removed_only_after_its_outcome_is_recorded(
    settings: Settings, ports: dict[str, Any]
) -> None:
    _upload(settings, ports, "trust-a", "one.dcm", CT_SMALL)

    assert not ports["blobs"].exists(settings.uploads_container, "trust-a/one.dcm")
    records = ports["state"].query("uploads", "trust-a")
    assert [r["outcome"] for r in records] == ["accepted"]
    steps = [(r["step"], r["outcome"]) for r in trail(ports["state"], "trust-a")]
    assert ("ingest", "staged") in steps and ("ingest", "accepted") in steps


def test_ingesting_the_same_upload_twice_stages_the_same_blob(
    settings: Settings, ports: dict[str, Any]
) -> None:
    first = _upload(settings, ports, "trust-a", "again.dcm", CT_SMALL)
    second = _upload(settings, ports, "trust-a", "again.dcm", CT_SMALL)

    assert first.staged == second.staged
    assert ports["blobs"].list_names(settings.instances_container) == first.staged


def test_an_upload_for_an_unknown_tenant_is_quarantined_whole(
    settings: Settings, ports: dict[str, Any]
) -> None:
    outcome = _upload(settings, ports, "st-nowhere", "x.dcm", CT_SMALL)

    assert outcome.tenant == UNKNOWN_TENANT
    assert [q["reason"] for q in outcome.quarantined] == ["unknown_tenant"]
    assert not _messages(settings)
    quarantined = ports["blobs"].read(
        settings.quarantine_container, outcome.quarantined[0]["blob"]
    )
    assert quarantined == CT_SMALL


def test_a_hostile_zip_is_quarantined_whole_and_nothing_is_staged(
    settings: Settings, ports: dict[str, Any]
) -> None:
    data = _zip({"fine.dcm": CT_SMALL, "../../etc/evil.dcm": MR_SMALL})

    outcome = _upload(settings, ports, "trust-a", "hostile.zip", data)

    assert outcome.outcome == "quarantined"
    assert [q["reason"] for q in outcome.quarantined] == ["zip_unsafe_path"]
    assert outcome.staged == []
    assert not _messages(settings)


def test_a_zip_found_bad_part_way_announces_none_of_its_members(
    settings: Settings, ports: dict[str, Any]
) -> None:
    # Members are read in order: two good instances, then a zip inside the zip.
    data = _zip(
        {"a/1.dcm": CT_SMALL, "a/2.dcm": MR_SMALL, "a/inner.zip": _zip({"x": b"y"})}
    )

    outcome = _upload(settings, ports, "trust-a", "nested.zip", data)

    assert outcome.outcome == "quarantined"
    assert [q["reason"] for q in outcome.quarantined] == ["not_supported.nested_zip"]
    assert outcome.staged == []
    assert not _messages(settings)


def test_a_version_uploaded_while_the_first_is_ingested_is_not_deleted(
    settings: Settings, ports: dict[str, Any]
) -> None:
    blobs = ports["blobs"]
    blobs.write(settings.uploads_container, "trust-a/scan.dcm", CT_SMALL)

    class Replacing:
        """The store, but a new version lands just before the first is deleted."""

        def __getattr__(self, name: str) -> Any:
            return getattr(blobs, name)

        def delete(self, container: str, name: str, *, if_match: str = "") -> None:
            blobs.write(container, name, MR_SMALL)
            blobs.delete(container, name, if_match=if_match)

    ingest_upload(
        f"{settings.uploads_container}/trust-a/scan.dcm",
        settings=settings,
        blobs=Replacing(),
        bus=ports["bus"],
        state=ports["state"],
    )

    assert blobs.read(settings.uploads_container, "trust-a/scan.dcm") == MR_SMALL


def test_an_upload_replaced_while_it_is_read_is_retried_and_kept(
    settings: Settings, ports: dict[str, Any]
) -> None:
    blobs = ports["blobs"]
    blobs.write(settings.uploads_container, "trust-a/scan.zip", _zip({"1": CT_SMALL}))

    class Replacing:
        """The store, but a new version lands just after the first is opened."""

        def __getattr__(self, name: str) -> Any:
            return getattr(blobs, name)

        def open_read(self, container: str, name: str) -> Any:
            opened = blobs.open_read(container, name)
            blobs.write(container, name, MR_SMALL)
            return opened

    with pytest.raises(RetryLater):
        ingest_upload(
            f"{settings.uploads_container}/trust-a/scan.zip",
            settings=settings,
            blobs=Replacing(),
            bus=ports["bus"],
            state=ports["state"],
        )

    assert blobs.read(settings.uploads_container, "trust-a/scan.zip") == MR_SMALL
    assert not _messages(settings)
