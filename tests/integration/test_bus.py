"""Both message buses: Azurite queues for real, Service Bus at its SDK boundary.

Service Bus cannot run locally, so ``ServiceBusBus`` gets a fake ``ServiceBusClient``
whose sender records messages or raises the SDK's own exception classes; what is
tested is the adapter's message building, sender caching and error translation.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)
from azure.storage.queue import QueueClient

from shared_code.adapters.bus import (
    STORAGE_QUEUE_MAX_BYTES,
    ServiceBusBus,
    StorageQueueBus,
)
from shared_code.errors import Quarantine, RetryLater

_INSTANCE = {
    "tenant": "trust-a",
    "upload": "0f" * 32,
    "blob": "instances/trust-a/ab.dcm",
    "sha256": "ab" * 32,
}


@pytest.fixture
def connection_string(stack: dict[str, Any]) -> str:
    return str(stack["azurite"]["connection_string"])


@pytest.fixture
def queue() -> str:
    return f"instances-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus(connection_string: str) -> Iterator[StorageQueueBus]:
    storage_bus = StorageQueueBus(connection_string)
    yield storage_bus
    storage_bus.close()


def _received(connection_string: str, queue: str) -> list[str]:
    client = QueueClient.from_connection_string(connection_string, queue)
    return [message.content for message in client.receive_messages(max_messages=32)]


def test_storage_queue_message_is_the_plain_json_envelope(
    bus: StorageQueueBus, connection_string: str, queue: str
) -> None:
    bus.send(queue, _INSTANCE, message_id=f"trust-a:{'ab' * 32}")
    bus.send(queue, {"share_id": "s1"}, message_id="s1")

    texts = _received(connection_string, queue)

    assert len(texts) == 2
    envelopes = [json.loads(text) for text in texts]  # plain text, not base64
    first = next(e for e in envelopes if e["message_id"] != "s1")
    assert first["message_id"] == f"trust-a:{'ab' * 32}"
    assert first["body"] == _INSTANCE
    assert datetime.fromisoformat(first["enqueued_time"]).tzinfo is not None
    assert set(first) == {"message_id", "body", "enqueued_time"}


def test_storage_queue_too_large_body_is_quarantined_and_not_sent(
    bus: StorageQueueBus, connection_string: str, queue: str
) -> None:
    bus.send(queue, {"share_id": "small"}, message_id="small")
    huge = {"share_id": "x" * STORAGE_QUEUE_MAX_BYTES}

    with pytest.raises(Quarantine) as caught:
        bus.send(queue, huge, message_id="huge")

    assert caught.value.reason == "message_too_large"
    assert [
        json.loads(t)["message_id"] for t in _received(connection_string, queue)
    ] == ["small"]


class _FakeSender:
    """Stands in for ``ServiceBusSender``: records, or raises what it is told to."""

    def __init__(self, failures: list[Exception]) -> None:
        self.sent: list[ServiceBusMessage] = []
        self.closed = False
        self._failures = failures

    def send_messages(self, message: ServiceBusMessage) -> None:
        if self._failures:
            raise self._failures.pop(0)
        self.sent.append(message)

    def close(self) -> None:
        self.closed = True


class _FakeClient:
    """Stands in for ``ServiceBusClient``: hands out one new sender per call."""

    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.senders: list[tuple[str, _FakeSender]] = []

    def get_queue_sender(self, queue_name: str) -> _FakeSender:
        sender = _FakeSender(self.failures)
        self.senders.append((queue_name, sender))
        return sender

    def close(self) -> None:
        pass


@pytest.fixture
def fake_client() -> _FakeClient:
    return _FakeClient()


@pytest.fixture
def service_bus(fake_client: _FakeClient) -> ServiceBusBus:
    return ServiceBusBus(
        "exchange.servicebus.windows.net",
        credential=None,  # type: ignore[arg-type]
        client=fake_client,  # type: ignore[arg-type]
    )


def test_service_bus_message_has_native_id_json_body_and_content_type(
    service_bus: ServiceBusBus, fake_client: _FakeClient
) -> None:
    service_bus.send("instances", _INSTANCE, message_id="trust-a:abab")
    service_bus.send("instances", {"tenant": "trust-b"}, message_id="trust-b:cdcd")
    service_bus.send("shares", {"share_id": "s1"}, message_id="s1")

    assert [queue for queue, _ in fake_client.senders] == ["instances", "shares"]
    message = fake_client.senders[0][1].sent[0]
    assert message.message_id == "trust-a:abab"
    assert message.content_type == "application/json"
    assert json.loads(str(message)) == _INSTANCE


@pytest.mark.parametrize(
    "failure",
    [
        ServiceBusServerBusyError(),
        ServiceBusConnectionError(),
        OperationTimeoutError(),
    ],
    ids=lambda failure: type(failure).__name__,
)
def test_service_bus_transient_failures_are_retry_later(
    service_bus: ServiceBusBus, fake_client: _FakeClient, failure: Exception
) -> None:
    fake_client.failures.append(failure)

    with pytest.raises(RetryLater):
        service_bus.send("instances", _INSTANCE, message_id="m1")
    service_bus.send("instances", _INSTANCE, message_id="m1")  # the retry works
    assert len(fake_client.senders[0][1].sent) == 1


def test_service_bus_oversized_message_is_quarantined(
    service_bus: ServiceBusBus, fake_client: _FakeClient
) -> None:
    fake_client.failures.append(MessageSizeExceededError())

    with pytest.raises(Quarantine) as caught:
        service_bus.send("instances", _INSTANCE, message_id="m1")

    assert caught.value.reason == "message_too_large"


def test_service_bus_missing_queue_is_retry_later_with_a_new_sender_next_time(
    service_bus: ServiceBusBus, fake_client: _FakeClient
) -> None:
    fake_client.failures.append(MessagingEntityNotFoundError())

    with pytest.raises(RetryLater):
        service_bus.send("instances", _INSTANCE, message_id="m1")
    service_bus.send("instances", _INSTANCE, message_id="m1")

    (_, dead), (_, fresh) = fake_client.senders
    assert dead.closed
    assert [m.message_id for m in fresh.sent] == ["m1"]
