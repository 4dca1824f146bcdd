"""The bus edge of the triggers, against real Azurite queues: Retry-After is honoured
by rescheduling, poison is set aside with its reason, other errors propagate."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage
from azure.storage.queue import QueueClient

from functions import _edge
from shared_code import wiring
from shared_code.errors import Quarantine, RetryLater


@pytest.fixture
def ctx(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in stack["app_env"].items():
        monkeypatch.setenv(name, value)
    wiring.reset_context()
    yield wiring.context()
    wiring.reset_context()


@pytest.fixture
def queue(stack: dict[str, Any]) -> Iterator[QueueClient]:
    client = QueueClient.from_connection_string(
        stack["azurite"]["connection_string"], f"it-edge-{uuid.uuid4().hex[:8]}"
    )
    client.create_queue()
    yield client
    client.delete_queue()


def _message(body: Any, message_id: str) -> func.ServiceBusMessage:
    # The class the Functions worker hands a Service Bus trigger (as the host does).
    return ServiceBusMessage(
        body=json.dumps(body).encode(),
        message_id=message_id,
        application_properties={},
        user_properties={},
        delivery_count=1,
    )


def _fail(error: Exception) -> Any:
    def call(ctx: Any, body: Any) -> Any:
        raise error

    return call


def test_retry_after_reschedules_a_delayed_copy_and_completes_the_message(
    ctx: Any, queue: QueueClient
) -> None:
    body = {"share_id": "s-1"}

    result = _edge.handle_message(
        _message(body, "s-1"),
        queue.queue_name,
        _fail(RetryLater("429", retry_after=120)),
    )

    assert result is None
    properties = queue.get_queue_properties()
    assert properties.approximate_message_count == 1
    assert list(queue.peek_messages()) == []  # invisible for now: delayed


def test_the_reschedule_count_is_carried_in_the_message_id(
    ctx: Any, queue: QueueClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, float]] = []
    monkeypatch.setattr(
        ctx.bus,
        "send",
        lambda q, b, *, message_id, delay: sent.append((message_id, delay)),
    )

    _edge.handle_message(
        _message({"a": 1}, "m-1~retry4"),
        queue.queue_name,
        _fail(RetryLater("503", retry_after=0.2)),
    )

    assert sent == [("m-1~retry5", 1.0)]


def test_past_the_reschedule_limit_or_without_retry_after_the_error_propagates(
    ctx: Any, queue: QueueClient
) -> None:
    last = f"m-1~retry{_edge.MAX_RESCHEDULES}"

    with pytest.raises(RetryLater):
        _edge.handle_message(
            _message({"a": 1}, last),
            queue.queue_name,
            _fail(RetryLater("x", retry_after=5)),
        )
    with pytest.raises(RetryLater):
        _edge.handle_message(
            _message({"a": 1}, "m-2"), queue.queue_name, _fail(RetryLater("no hint"))
        )
    assert queue.get_queue_properties().approximate_message_count == 0


def test_poison_is_set_aside_with_its_reason(ctx: Any, queue: QueueClient) -> None:
    message_id = f"poison-{uuid.uuid4().hex[:8]}"

    _edge.handle_message(
        _message({"tenant": "trust-a"}, message_id),
        queue.queue_name,
        _fail(Quarantine("malformed_message", "no blob")),
        tenant_of=lambda body: str(body["tenant"]),
    )

    name = f"trust-a/messages/{queue.queue_name}/{message_id}.json.reason.json"
    reason = json.loads(ctx.blobs.read(ctx.settings.quarantine_container, name))
    assert reason["reason"] == "malformed_message"
