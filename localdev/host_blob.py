"""Blob triggers of the local host: poll Azurite, run each new blob version once.

As the Functions host does, a blob version (container, name, ETag) is done when its
receipt blob ``blobreceipts/<host id>/<function>/<etag>/<container>/<name>`` in the
``azure-webjobs-hosts`` container exists without the ``Incomplete`` mark. The lease
on the receipt is the lock that keeps two hosts off one blob; it is renewed while the
function runs. After ``max_attempts`` failures a message goes to the
``webjobs-blobtrigger-poison`` queue and the receipt is written, so the blob is not
tried again until its content (ETag) changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import azure.functions as func
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient
from azure.storage.queue import QueueServiceClient

from localdev.host_app import BlobFunction, Invocation, Recorder

_log = logging.getLogger(__name__)

RECEIPTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"


@dataclass(frozen=True)
class BlobVersion:
    container: str
    name: str
    etag: str

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"


def receipt_name(host_id: str, function: str, blob: BlobVersion) -> str:
    """Where the receipt of one blob version lives in ``azure-webjobs-hosts``."""
    return f"blobreceipts/{host_id}/{function}/{blob.etag}/{blob.container}/{blob.name}"


class BlobListener:
    """Polls the containers of the blob-triggered functions and runs new blobs."""

    def __init__(
        self,
        functions: list[BlobFunction],
        blobs: BlobServiceClient,
        queues: QueueServiceClient,
        recorder: Recorder,
        *,
        host_id: str,
        workers: int,
        poll_interval: float,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        lease_seconds: int = 60,
    ) -> None:
        self._functions = functions
        self._blobs = blobs
        self._queues = queues
        self._recorder = recorder
        self._host_id = host_id
        self._poll_interval = poll_interval
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._lease_seconds = lease_seconds
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="blob-trigger")
        self._lock = threading.Lock()
        self._done: set[tuple[str, BlobVersion]] = set()
        self._in_flight: set[tuple[str, BlobVersion]] = set()
        self._pending = 0
        self._stopping = threading.Event()
        self.cycles = 0

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set."""
        self._ensure_receipts_container()
        while not stop.is_set():
            try:
                self.scan()
            except Exception:
                _log.exception("blob scan failed; retrying next poll")
            with self._lock:
                self.cycles += 1
            stop.wait(self._poll_interval)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight) or self._pending > 0

    def shutdown(self, timeout: float) -> None:
        """Stop retrying, let running invocations finish (bounded by the caller)."""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while self.busy_in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)

    def busy_in_flight(self) -> bool:
        with self._lock:
            return bool(self._in_flight)

    def scan(self) -> None:
        """One pass over every blob-triggered container; queues what is new."""
        pending = 0
        for function in self._functions:
            container = self._blobs.get_container_client(function.container)
            try:
                listing = list(container.list_blobs(name_starts_with=function.prefix))
            except ResourceNotFoundError:
                continue
            for item in listing:
                if function.match(item.name) is None:
                    continue
                blob = BlobVersion(function.container, item.name, _etag(item.etag))
                key = (function.name, blob)
                with self._lock:
                    if key in self._done:
                        continue
                    if key in self._in_flight:
                        pending += 1
                        continue
                try:
                    complete = self._receipt_complete(function, blob)
                except AzureError as exc:
                    # One unreadable name (say one whose dot segments the SDK
                    # resolves) must not stop the blobs listed after it.
                    _log.warning(
                        "blob skipped this pass: %s (%s)",
                        type(exc).__name__,
                        hashlib.sha256(item.name.encode()).hexdigest()[:12],
                    )
                    continue
                if complete:
                    with self._lock:
                        self._done.add(key)
                    continue
                pending += 1
                with self._lock:
                    if self._stopping.is_set():
                        break
                    self._in_flight.add(key)
                self._pool.submit(self._process, function, blob)
        with self._lock:
            self._pending = pending

    def _ensure_receipts_container(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._blobs.create_container(RECEIPTS_CONTAINER)
        with contextlib.suppress(ResourceExistsError):
            self._queues.create_queue(POISON_QUEUE)

    def _receipt(self, function: BlobFunction, blob: BlobVersion) -> BlobClient:
        return self._blobs.get_blob_client(
            RECEIPTS_CONTAINER, receipt_name(self._host_id, function.name, blob)
        )

    def _receipt_complete(self, function: BlobFunction, blob: BlobVersion) -> bool:
        try:
            properties = self._receipt(function, blob).get_blob_properties()
        except ResourceNotFoundError:
            return False
        return "Incomplete" not in (properties.metadata or {})

    def _process(self, function: BlobFunction, blob: BlobVersion) -> None:
        key = (function.name, blob)
        try:
            self._process_locked(function, blob)
        except Exception:
            _log.exception("blob trigger %s: host error", function.name)
        finally:
            with self._lock:
                self._in_flight.discard(key)

    def _process_locked(self, function: BlobFunction, blob: BlobVersion) -> None:
        receipt = self._receipt(function, blob)
        with contextlib.suppress(ResourceExistsError):
            receipt.upload_blob(b"", metadata={"Incomplete": "true"}, overwrite=False)
        try:
            lease = receipt.acquire_lease(lease_duration=self._lease_seconds)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # another host holds the blob
                return
            raise
        renewal = _LeaseRenewal(lease, self._lease_seconds / 3)
        renewal.start()
        try:
            outcome = self._run_attempts(function, blob, receipt)
            if outcome is not None:
                receipt.set_blob_metadata({"Outcome": outcome}, lease=lease)
                with self._lock:
                    self._done.add((function.name, blob))
        finally:
            renewal.stop()
            try:
                lease.release()
            except HttpResponseError:
                _log.warning("blob receipt lease of %s was lost", function.name)

    def _run_attempts(
        self, function: BlobFunction, blob: BlobVersion, receipt: BlobClient
    ) -> str | None:
        """The receipt's outcome, or None when the blob is left for a later try."""
        properties = receipt.get_blob_properties()
        if "Incomplete" not in (properties.metadata or {}):
            return None  # another host finished it while we waited for the lease

        source = self._blobs.get_blob_client(blob.container, blob.name)
        try:
            download = source.download_blob(
                etag=f'"{blob.etag}"', match_condition=MatchConditions.IfNotModified
            )
            data = download.readall()
        except (ResourceNotFoundError, ResourceModifiedError):
            # This version is gone; a changed blob comes back under its new ETag.
            return "Gone"

        for attempt in range(1, self._max_attempts + 1):
            if self._stopping.is_set():
                return None
            stream = func.blob.InputStream(
                data=data,
                name=blob.path,
                uri=source.url,
                length=len(data),
                blob_properties=dict(download.properties),
                metadata=dict(download.properties.metadata or {}),
            )
            started = time.monotonic()
            self._recorder.started()
            try:
                function.call(**{function.param: stream})
            except Exception as exc:
                self._recorder.record(
                    Invocation(
                        function.name,
                        "failed",
                        time.monotonic() - started,
                        blob.path,
                        attempt,
                        type(exc).__name__,
                    )
                )
                _log.warning(
                    "blob trigger %s attempt %d failed: %s",
                    function.name,
                    attempt,
                    type(exc).__name__,
                    exc_info=True,
                )
                if attempt < self._max_attempts:
                    self._stopping.wait(self._retry_delay * attempt)
                continue
            self._recorder.record(
                Invocation(
                    function.name,
                    "succeeded",
                    time.monotonic() - started,
                    blob.path,
                    attempt,
                )
            )
            return "Succeeded"

        self._send_poison(function, blob)
        self._recorder.record(
            Invocation(function.name, "poisoned", 0.0, blob.path, self._max_attempts)
        )
        return "Poisoned"

    def _send_poison(self, function: BlobFunction, blob: BlobVersion) -> None:
        # The shape of the Functions host's poison message (as plain JSON text).
        message = {
            "Type": "BlobTrigger",
            "FunctionId": f"Host.Functions.{function.name}",
            "BlobType": "BlockBlob",
            "ContainerName": blob.container,
            "BlobName": blob.name,
            "ETag": blob.etag,
        }
        self._queues.get_queue_client(POISON_QUEUE).send_message(json.dumps(message))


class _LeaseRenewal:
    """Renews a blob lease in the background while a function runs."""

    def __init__(self, lease: BlobLeaseClient, interval: float) -> None:
        self._lease = lease
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="blob-lease-renewal", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self._lease.renew()
            except HttpResponseError:
                _log.warning("could not renew a blob receipt lease")


def _etag(etag: str) -> str:
    return etag.strip('"')
