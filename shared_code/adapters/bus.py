"""The message bus (``ports.MessageBus``): Service Bus in Azure, Azurite queues locally.

Both send one JSON body per message under a caller-chosen ``message_id`` and fail
alike (``azure_errors``): an oversized message is ``Quarantine("message_too_large")``,
an unreachable or throttling service ``RetryLater``.

Size limits: Service Bus Standard takes messages up to 256 KiB (Premium more); an
Azure Storage queue message is at most 64 KiB. The local bus therefore refuses
envelopes above 64 KiB, stricter than Standard; the project's messages (``instances``,
``dicom-events``, ``shares``) are a few hundred bytes, so neither limit is near.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusSender
from azure.servicebus.exceptions import MessagingEntityNotFoundError
from azure.storage.queue import QueueClient

from shared_code.adapters.azure_errors import translated
from shared_code.errors import Quarantine

_log = logging.getLogger(__name__)

STORAGE_QUEUE_MAX_BYTES = 64 * 1024
_JSON = "application/json"
_MAX_DELAY_SECONDS = 7 * 24 * 3600


class ServiceBusBus:
    """``ports.MessageBus`` on one Service Bus namespace, one cached sender per queue.

    ``client`` replaces the ``ServiceBusClient`` (tests fake the SDK boundary with it).
    """

    def __init__(
        self,
        fully_qualified_namespace: str,
        credential: TokenCredential,
        *,
        client: ServiceBusClient | None = None,
    ) -> None:
        self._client = client or ServiceBusClient(fully_qualified_namespace, credential)
        self._senders: dict[str, ServiceBusSender] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def send(
        self,
        queue: str,
        body: Mapping[str, Any],
        *,
        message_id: str,
        delay: float = 0.0,
    ) -> None:
        message = ServiceBusMessage(
            json.dumps(body),
            message_id=message_id,
            content_type=_JSON,
            scheduled_enqueue_time_utc=(
                datetime.now(UTC) + timedelta(seconds=delay) if delay > 0 else None
            ),
        )
        sender, lock = self._sender(queue)

        # A sender is not thread-safe; the host runs functions on a thread pool.
        with lock, translated(f"send to {queue}"):
            try:
                sender.send_messages(message)
            except MessagingEntityNotFoundError:
                self._forget(queue)
                raise

    def close(self) -> None:
        with self._guard:
            for sender in self._senders.values():
                sender.close()
            self._senders.clear()
        self._client.close()

    def _sender(self, queue: str) -> tuple[ServiceBusSender, threading.Lock]:
        with self._guard:
            if queue not in self._senders:
                self._senders[queue] = self._client.get_queue_sender(queue)
                self._locks.setdefault(queue, threading.Lock())
            return self._senders[queue], self._locks[queue]

    def _forget(self, queue: str) -> None:
        # A queue created after the failure needs a new link, not the dead one.
        with self._guard:
            sender = self._senders.pop(queue, None)
        if sender is not None:
            sender.close()


class StorageQueueBus:
    """``ports.MessageBus`` on Azure Storage queues (Azurite), standing in for Service
    Bus locally. Each message's text is the JSON envelope of docs/ARCHITECTURE.md,
    without base64; a queue is created on first use."""

    def __init__(self, connection_string: str) -> None:
        self._connection_string = connection_string
        self._queues: dict[str, QueueClient] = {}
        self._guard = threading.Lock()

    def send(
        self,
        queue: str,
        body: Mapping[str, Any],
        *,
        message_id: str,
        delay: float = 0.0,
    ) -> None:
        envelope = {
            "message_id": message_id,
            "body": dict(body),
            "enqueued_time": datetime.now(UTC).isoformat(),
        }
        text = json.dumps(envelope)
        size = len(text.encode("utf-8"))
        if size > STORAGE_QUEUE_MAX_BYTES:
            raise Quarantine(
                "message_too_large",
                f"{queue}: {size} bytes > {STORAGE_QUEUE_MAX_BYTES} (storage queue)",
            )

        # A storage queue delays a message by keeping it invisible, the way Service
        # Bus schedules one; Azure Storage caps that at 7 days.
        visibility = min(math.ceil(delay), _MAX_DELAY_SECONDS) if delay > 0 else None
        with translated(f"send to {queue}"):
            self._queue(queue).send_message(text, visibility_timeout=visibility)

    def close(self) -> None:
        with self._guard:
            for client in self._queues.values():
                client.close()
            self._queues.clear()

    def _queue(self, queue: str) -> QueueClient:
        with self._guard:
            client = self._queues.get(queue)
            if client is None:
                client = QueueClient.from_connection_string(
                    self._connection_string, queue
                )
                with translated(f"create queue {queue}"):
                    try:
                        client.create_queue()
                        _log.info("created queue %s", queue)
                    except ResourceExistsError:
                        pass
                self._queues[queue] = client
            return client
