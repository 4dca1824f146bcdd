"""Service Bus queue triggers of the local host, on Azurite queues of the same name.

A message's text is the local bus envelope
``{"message_id", "body", "enqueued_time"}`` (docs/ARCHITECTURE.md). Receiving with a
visibility timeout stands in for the peek-lock: the timeout is extended while the
function runs (lock renewal), so no other worker or host sees the message. Success
deletes it; a failure makes it visible again after ``RetryLater.retry_after`` or a
short backoff. Azurite's dequeue count is the delivery count; past the queue's maximum
the message moves to ``<queue>-deadletter`` with the reason and description, as
Service Bus dead-letters it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.functions.servicebus import ServiceBusMessage
from azure.storage.queue import QueueClient, QueueMessage, QueueServiceClient

from localdev.host_app import Invocation, QueueFunction, Recorder

_log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = "-deadletter"
MALFORMED_ENVELOPE = "MalformedEnvelope"
MAX_DELIVERY_EXCEEDED = "MaxDeliveryCountExceeded"
_DESCRIPTION_LIMIT = 1024


class QueueListener:
    """Worker threads that receive, run and settle messages of every queue trigger."""

    def __init__(
        self,
        functions: list[QueueFunction],
        queues: QueueServiceClient,
        recorder: Recorder,
        *,
        workers: int,
        poll_interval: float,
        lock_seconds: int = 60,
        max_delivery_count: int = 10,
        max_delivery_counts: Mapping[str, int] | None = None,
        retry_backoff: float = 2.0,
    ) -> None:
        self._functions = functions
        self._queues = queues
        self._recorder = recorder
        self._workers = workers
        self._poll_interval = poll_interval
        self._lock_seconds = lock_seconds
        self._max_delivery_count = max_delivery_count
        self._max_delivery_counts = dict(max_delivery_counts or {})
        self._retry_backoff = retry_backoff
        self._lock = threading.Lock()
        self._in_flight = 0
        self.cycles = 0

    def threads(self, stop: threading.Event) -> list[threading.Thread]:
        """The worker threads (not started) that run until ``stop`` is set."""
        for function in self._functions:
            for name in (function.queue_name, function.queue_name + DEAD_LETTER_SUFFIX):
                with contextlib.suppress(ResourceExistsError):
                    self._queues.create_queue(name)
        return [
            threading.Thread(
                target=self._work, args=(stop, index), name=f"bus-worker-{index}"
            )
            for index in range(self._workers if self._functions else 0)
        ]

    def max_delivery(self, queue_name: str) -> int:
        return self._max_delivery_counts.get(queue_name, self._max_delivery_count)

    def busy(self) -> bool:
        """Whether a message is running or waiting (visible or not) on a queue."""
        with self._lock:
            if self._in_flight:
                return True
        for function in self._functions:
            queue = self._queues.get_queue_client(function.queue_name)
            if queue.get_queue_properties().approximate_message_count:
                return True
        return False

    def _work(self, stop: threading.Event, index: int) -> None:
        # Workers start on different queues so one busy queue does not starve others.
        count = len(self._functions)
        turn = index
        while not stop.is_set():
            received = False
            for offset in range(count):
                if stop.is_set():
                    break
                function = self._functions[(turn + offset) % count]
                try:
                    received = self.receive_one(function)
                except Exception:
                    _log.exception("queue %s: receive failed", function.queue_name)
                if received:
                    break
            turn += 1
            if index == 0:
                with self._lock:
                    self.cycles += 1
            if not received:
                stop.wait(self._poll_interval)

    def receive_one(self, function: QueueFunction) -> bool:
        """Receive, run and settle one message; False when the queue had none."""
        queue = self._queues.get_queue_client(function.queue_name)
        with self._lock:
            self._in_flight += 1
        try:
            message = queue.receive_message(visibility_timeout=self._lock_seconds)
            if message is None:
                return False
            self._recorder.started()
            self._handle(function, queue, message)
            return True
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handle(
        self, function: QueueFunction, queue: QueueClient, message: QueueMessage
    ) -> None:
        lock = _MessageLock(queue, message, self._lock_seconds)
        delivery_count = message.dequeue_count or 1
        envelope = _parse_envelope(message.content)
        if envelope is None:
            self._dead_letter(
                function, lock, None, delivery_count, MALFORMED_ENVELOPE,
                "the message is not a local bus envelope",
                raw=message.content,
            )  # fmt: skip
            return
        if delivery_count > self.max_delivery(function.queue_name):
            # A host died mid-run often enough to use up the budget.
            self._dead_letter(
                function, lock, envelope, delivery_count, MAX_DELIVERY_EXCEEDED,
                f"delivered {delivery_count} times",
            )  # fmt: skip
            return

        bus_message = _service_bus_message(envelope, delivery_count, lock)
        started = time.monotonic()
        lock.start_renewal()
        try:
            function.call(**{function.param: bus_message})
        except Exception as exc:
            lock.stop_renewal()
            duration = time.monotonic() - started
            _log.warning(
                "queue trigger %s failed: %s",
                function.name,
                type(exc).__name__,
                exc_info=True,
            )
            self._settle_failure(
                function, lock, envelope, delivery_count, exc, duration
            )
            return
        lock.stop_renewal()
        lock.delete()
        self._recorder.record(
            Invocation(
                function.name,
                "succeeded",
                time.monotonic() - started,
                str(envelope["message_id"]),
                delivery_count,
            )
        )

    def _settle_failure(
        self,
        function: QueueFunction,
        lock: _MessageLock,
        envelope: dict[str, Any],
        delivery_count: int,
        exc: Exception,
        duration: float,
    ) -> None:
        if delivery_count >= self.max_delivery(function.queue_name):
            self._dead_letter(
                function, lock, envelope, delivery_count, type(exc).__name__, str(exc)
            )
            return

        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after >= 0:
            delay = float(retry_after)
        else:
            delay = self._retry_backoff * min(delivery_count, 5)
        next_visible_on = lock.abandon(delay)
        self._recorder.record(
            Invocation(
                function.name,
                "failed",
                duration,
                str(envelope["message_id"]),
                delivery_count,
                type(exc).__name__,
                next_visible_on,
            )
        )

    def _dead_letter(
        self,
        function: QueueFunction,
        lock: _MessageLock,
        envelope: dict[str, Any] | None,
        delivery_count: int,
        reason: str,
        description: str,
        raw: str | None = None,
    ) -> None:
        letter: dict[str, Any] = dict(envelope or {"message_id": lock.message_id})
        if raw is not None:
            letter["raw"] = raw
        letter["dead_letter_reason"] = reason
        letter["dead_letter_error_description"] = description[:_DESCRIPTION_LIMIT]
        letter["delivery_count"] = delivery_count
        self._queues.get_queue_client(
            function.queue_name + DEAD_LETTER_SUFFIX
        ).send_message(json.dumps(letter))
        lock.delete()
        self._recorder.record(
            Invocation(
                function.name,
                "dead-lettered",
                0.0,
                str(letter["message_id"]),
                delivery_count,
                reason,
            )
        )


class _MessageLock:
    """A received message's pop receipt, shared by the renewal and the settlement."""

    def __init__(self, queue: QueueClient, message: QueueMessage, seconds: int) -> None:
        self._queue = queue
        self.message_id: str = message.id
        self._pop_receipt: str | None = message.pop_receipt
        self.locked_until = message.next_visible_on
        self._seconds = seconds
        self._mutex = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start_renewal(self) -> None:
        self._thread = threading.Thread(
            target=self._renew_loop, name="bus-lock-renewal", daemon=True
        )
        self._thread.start()

    def stop_renewal(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def delete(self) -> None:
        with self._mutex:
            self._queue.delete_message(self.message_id, self._pop_receipt)

    def abandon(self, delay: float) -> datetime | None:
        """Make the message visible again after ``delay`` seconds; when it will be."""
        with self._mutex:
            updated = self._queue.update_message(
                self.message_id,
                pop_receipt=self._pop_receipt,
                visibility_timeout=max(0, round(delay)),
            )
            self._pop_receipt = updated.pop_receipt
            return updated.next_visible_on

    def _renew_loop(self) -> None:
        # Renew well before expiry: a third of the lock, as the Service Bus SDK does.
        while not self._done.wait(self._seconds / 3):
            with self._mutex:
                if self._done.is_set():
                    return
                try:
                    updated = self._queue.update_message(
                        self.message_id,
                        pop_receipt=self._pop_receipt,
                        visibility_timeout=self._seconds,
                    )
                except HttpResponseError:
                    _log.warning(
                        "lost the lock of a message on %s", self._queue.queue_name
                    )
                    return
                self._pop_receipt = updated.pop_receipt
                self.locked_until = updated.next_visible_on


def _parse_envelope(text: str | None) -> dict[str, Any] | None:
    try:
        envelope = json.loads(text or "")
    except ValueError:
        return None
    if (
        not isinstance(envelope, dict)
        or not isinstance(envelope.get("message_id"), str)
        or "body" not in envelope
    ):
        return None
    return envelope


def _service_bus_message(
    envelope: dict[str, Any], delivery_count: int, lock: _MessageLock
) -> ServiceBusMessage:
    # The envelope holds the JSON value; Service Bus would hand over its bytes.
    data = json.dumps(envelope["body"]).encode()
    return ServiceBusMessage(
        body=data,
        message_id=envelope["message_id"],
        delivery_count=delivery_count,
        enqueued_time_utc=_parse_time(envelope.get("enqueued_time")),
        content_type="application/json",
        locked_until=lock.locked_until,
        lock_token=lock.message_id,
        application_properties={},
        user_properties={},
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
