"""The local Functions host against a real Azurite, driving the test-only hostapp.

Given the stack's Azurite, when the host runs the hostapp's blob, Service Bus, HTTP
and timer triggers, then each behaves as the Functions host would.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient

from localdev.host import LocalHost
from localdev.host_blob import POISON_QUEUE, RECEIPTS_CONTAINER

APP = "tests.fixtures.hostapp.function_app"
QUEUE = "hostapp-work"


@pytest.fixture(scope="module")
def host_stack(stack: dict[str, Any]) -> dict[str, Any]:
    return {**stack, "app_env": {**stack["app_env"], "HOSTAPP_QUEUE": QUEUE}}


@pytest.fixture(scope="module")
def blobs(host_stack: dict[str, Any]) -> BlobServiceClient:
    connection = host_stack["app_env"]["AzureWebJobsStorage"]
    service = BlobServiceClient.from_connection_string(connection)
    for container in ("hostapp-in", "hostapp-out"):
        with contextlib.suppress(ResourceExistsError):
            service.create_container(container)
    return service


@pytest.fixture
def inbox(blobs: BlobServiceClient) -> ContainerClient:
    """The blob trigger's container, empty at the start: no other test's blobs."""
    container = blobs.get_container_client("hostapp-in")
    for blob in container.list_blobs():
        container.delete_blob(blob.name)
    return container


@pytest.fixture(scope="module")
def queues(host_stack: dict[str, Any]) -> QueueServiceClient:
    connection = host_stack["app_env"]["AzureWebJobsStorage"]
    return QueueServiceClient.from_connection_string(connection)


@pytest.fixture
def work_queue(queues: QueueServiceClient) -> Iterator[QueueClient]:
    """The trigger queue and its dead-letter queue, empty at the start."""
    for name in (QUEUE, QUEUE + "-deadletter"):
        try:
            queues.create_queue(name)
        except ResourceExistsError:
            queues.get_queue_client(name).clear_messages()
    yield queues.get_queue_client(QUEUE)


def make_host(host_stack: dict[str, Any], tmp_path: Path, **options: Any) -> LocalHost:
    settings: dict[str, Any] = {
        "app": APP,
        "http_port": 0,
        "state_dir": tmp_path,
        "poll_interval": 0.2,
        "retry_backoff": 0.0,
        "blob_retry_delay": 0.0,
        "dicom_events": False,
    }
    settings.update(options)
    return LocalHost(host_stack, **settings)


def send(queue: QueueClient, body: Any, message_id: str | None = None) -> str:
    message_id = message_id or str(uuid.uuid4())
    envelope = {
        "message_id": message_id,
        "body": body,
        "enqueued_time": datetime.now(UTC).isoformat(),
    }
    queue.send_message(json.dumps(envelope))
    return message_id


def markers(blobs: BlobServiceClient, prefix: str) -> list[str]:
    container = blobs.get_container_client("hostapp-out")
    return [b.name for b in container.list_blobs(name_starts_with=prefix)]


def dead_letters(queues: QueueServiceClient) -> list[dict[str, Any]]:
    queue = queues.get_queue_client(QUEUE + "-deadletter")
    return [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]


def test_each_blob_is_processed_once_across_a_restart(
    host_stack: dict[str, Any],
    blobs: BlobServiceClient,
    inbox: ContainerClient,
    tmp_path: Path,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    host_id = f"test-{uuid.uuid4().hex[:8]}"
    for index in range(3):
        inbox.upload_blob(f"{tenant}/scan{index}.dcm", b"abc")

    with make_host(host_stack, tmp_path, host_id=host_id) as host:
        assert host.wait_idle(60)
    with make_host(host_stack, tmp_path, host_id=host_id) as host:
        assert host.wait_idle(60)
        inbox.upload_blob(f"{tenant}/scan0.dcm", b"changed", overwrite=True)
        assert host.wait_idle(60)

    runs = markers(blobs, f"blob/hostapp-in/{tenant}/")
    per_blob = sorted(name.split("/")[3] + "/" + name.split("/")[4] for name in runs)
    assert per_blob == ["scan0.dcm/3", "scan0.dcm/7", "scan1.dcm/3", "scan2.dcm/3"]
    receipts = blobs.get_container_client(RECEIPTS_CONTAINER).list_blobs(
        name_starts_with=f"blobreceipts/{host_id}/on_upload/"
    )
    assert len(list(receipts)) == 4


def test_two_hosts_never_process_one_blob_twice(
    host_stack: dict[str, Any],
    blobs: BlobServiceClient,
    inbox: ContainerClient,
    tmp_path: Path,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    host_id = f"test-{uuid.uuid4().hex[:8]}"
    for index in range(8):
        inbox.upload_blob(f"{tenant}/slow{index}.dcm", b"x")

    first = make_host(host_stack, tmp_path, host_id=host_id).start()
    second = make_host(host_stack, tmp_path, host_id=host_id).start()
    try:
        assert first.wait_idle(60)
        assert second.wait_idle(60)
    finally:
        first.stop()
        second.stop()

    assert len(markers(blobs, f"blob/hostapp-in/{tenant}/")) == 8


def test_a_failing_blob_is_poisoned_after_five_attempts(
    host_stack: dict[str, Any],
    inbox: ContainerClient,
    queues: QueueServiceClient,
    tmp_path: Path,
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    inbox.upload_blob(f"{tenant}/fail.dcm", b"x")

    with make_host(host_stack, tmp_path, host_id=f"test-{tenant}") as host:
        assert host.wait_idle(60)
        outcomes = [i.outcome for i in host.invocations if tenant in i.trigger_id]

    assert outcomes == ["failed"] * 5 + ["poisoned"]
    poison = queues.get_queue_client(POISON_QUEUE).peek_messages(max_messages=32)
    names = [json.loads(m.content)["BlobName"] for m in poison]
    assert f"{tenant}/fail.dcm" in names


def test_a_message_failing_twice_then_succeeds(
    host_stack: dict[str, Any],
    blobs: BlobServiceClient,
    work_queue: QueueClient,
    tmp_path: Path,
) -> None:
    message_id = send(work_queue, {"fail_times": 2})

    with make_host(host_stack, tmp_path) as host:
        assert host.wait_idle(60)

    assert sorted(markers(blobs, f"bus/{message_id}/")) == [
        f"bus/{message_id}/{n}" for n in (1, 2, 3)
    ]
    assert work_queue.get_queue_properties().approximate_message_count == 0


def test_lock_renewal_keeps_a_slow_message_from_other_hosts(
    host_stack: dict[str, Any],
    blobs: BlobServiceClient,
    work_queue: QueueClient,
    tmp_path: Path,
) -> None:
    message_id = send(work_queue, {"sleep": 5})

    first = make_host(host_stack, tmp_path, lock_seconds=2).start()
    second = make_host(host_stack, tmp_path, lock_seconds=2).start()
    try:
        assert first.wait_idle(60)
        assert second.wait_idle(60)
    finally:
        first.stop()
        second.stop()

    assert markers(blobs, f"bus/{message_id}/") == [f"bus/{message_id}/1"]


def test_a_message_that_always_fails_is_dead_lettered(
    host_stack: dict[str, Any],
    queues: QueueServiceClient,
    work_queue: QueueClient,
    tmp_path: Path,
) -> None:
    message_id = send(work_queue, {"fail_times": 99, "pad": 5000})

    with make_host(
        host_stack, tmp_path, max_delivery_counts={QUEUE: 3}, workers=2
    ) as host:
        assert host.wait_idle(60)

    [letter] = dead_letters(queues)
    assert letter["message_id"] == message_id
    assert letter["body"] == {"fail_times": 99, "pad": 5000}
    assert letter["dead_letter_reason"] == "RuntimeError"
    assert letter["dead_letter_error_description"].startswith("planned failure")
    assert len(letter["dead_letter_error_description"]) <= 1024
    assert letter["delivery_count"] == 3
    assert work_queue.get_queue_properties().approximate_message_count == 0


def test_a_malformed_envelope_is_dead_lettered_at_once(
    host_stack: dict[str, Any],
    queues: QueueServiceClient,
    work_queue: QueueClient,
    tmp_path: Path,
) -> None:
    work_queue.send_message("not json")

    with make_host(host_stack, tmp_path) as host:
        assert host.wait_idle(60)

    [letter] = dead_letters(queues)
    assert letter["dead_letter_reason"] == "MalformedEnvelope"
    assert letter["delivery_count"] == 1


def test_retry_after_keeps_the_message_invisible_that_long(
    host_stack: dict[str, Any], work_queue: QueueClient, tmp_path: Path
) -> None:
    message_id = send(work_queue, {"fail_times": 1, "retry_after": 120})
    before = datetime.now(UTC)
    host = make_host(host_stack, tmp_path).start()
    try:
        failed = threading.Event()
        while not failed.wait(0.1):
            if any(i.trigger_id == message_id for i in host.invocations):
                failed.set()
    finally:
        host.stop()

    [invocation] = [i for i in host.invocations if i.trigger_id == message_id]
    assert invocation.outcome == "failed"
    assert invocation.error == "RetryLater"
    # Azurite's own next-visible time, with a second's slack for clock rounding.
    assert invocation.next_visible_on >= before + timedelta(seconds=119)
    assert work_queue.receive_message() is None  # still invisible


def test_http_routes_methods_and_errors(
    host_stack: dict[str, Any], tmp_path: Path
) -> None:
    with make_host(host_stack, tmp_path) as host:
        base = f"http://127.0.0.1:{host.http_port}/hostapi"

        item = requests.get(f"{base}/items/42?q=ct", timeout=10)
        not_int = requests.get(f"{base}/items/abc", timeout=10)
        wrong_method = requests.post(f"{base}/items/42", timeout=10)
        no_prefix = requests.get(f"http://127.0.0.1:{host.http_port}/items/42")
        echo = requests.post(f"{base}/echo", data=b"hello", timeout=10)
        boom = requests.get(f"{base}/boom", timeout=10)

    assert item.status_code == 200
    assert item.json() == {"item_id": "42", "q": "ct"}
    assert item.headers["Content-Type"].startswith("application/json")
    assert not_int.status_code == 404
    assert wrong_method.status_code == 404
    assert no_prefix.status_code == 404
    assert (echo.status_code, echo.content, echo.headers["X-Echo"]) == (
        201,
        b"hello",
        "1",
    )
    assert boom.status_code == 500
    assert "secret" not in boom.text
    assert "Traceback" not in boom.text


def test_the_timer_runs_on_schedule(host_stack: dict[str, Any], tmp_path: Path) -> None:
    from tests.fixtures.hostapp import function_app

    function_app.timer_ran.clear()
    with make_host(host_stack, tmp_path):
        assert function_app.timer_ran.wait(30)
    assert function_app.timer_runs
