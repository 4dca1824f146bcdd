"""The local Azure Functions host: loads function_app.py and drives its triggers.

There are no Functions Core Tools locally. This host applies the stack's app
environment, imports the v2 app, and runs blob triggers (polling Azurite), Service
Bus queue triggers (Azurite queues), HTTP triggers (127.0.0.1, host.json route
prefix) and timer triggers; beside them it emits the DICOM services' change events.

    python -m localdev.host --stack .local/stack.json [--app function_app]
        [--workers 4] [--http-port 7071] [--state-dir .local/host]

Tests use ``LocalHost(...).start()``, ``wait_idle()`` and ``stop()``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from localdev.dicom_events import EVENTS_QUEUE, DicomEventEmitter, services_from_app_env
from localdev.host_app import (
    BlobFunction,
    HostError,
    HttpFunction,
    Invocation,
    LoadedApp,
    QueueFunction,
    Recorder,
    TimerFunction,
    apply_environment,
    load_app,
)
from localdev.host_blob import BlobListener
from localdev.host_bus import QueueListener
from localdev.host_http import HttpListener
from localdev.host_timer import TimerListener

_log = logging.getLogger(__name__)

__all__ = ["HostError", "Invocation", "LocalHost", "main"]


class LocalHost:
    """One local Functions host process's worth of listeners, started and stopped."""

    def __init__(
        self,
        stack: Mapping[str, Any] | str | Path,
        *,
        app: str = "function_app",
        workers: int = 4,
        http_port: int | None = 7071,
        state_dir: str | Path = ".local/host",
        host_id: str = "localdev",
        poll_interval: float = 1.0,
        lock_seconds: int = 60,
        max_delivery_count: int = 10,
        max_delivery_counts: Mapping[str, int] | None = None,
        retry_backoff: float = 2.0,
        blob_max_attempts: int = 5,
        blob_retry_delay: float = 1.0,
        dicom_events: bool = True,
        deletion_check_interval: float = 10.0,
        app_dir: str | Path | None = None,
    ) -> None:
        """Load the app; ``http_port=0`` picks a free port, ``None`` serves no HTTP."""
        description: Mapping[str, Any] = (
            stack if isinstance(stack, Mapping) else json.loads(Path(stack).read_text())
        )
        self.app_env: dict[str, str] = {
            k: str(v) for k, v in description.get("app_env", {}).items()
        }
        if app_dir is not None and str(app_dir) not in sys.path:
            sys.path.insert(0, str(app_dir))

        apply_environment(self.app_env)
        self.app: LoadedApp = load_app(app, self.app_env)

        connection = self.app_env.get("AzureWebJobsStorage") or description.get(
            "azurite", {}
        ).get("connection_string")
        if not connection:
            raise HostError("AzureWebJobsStorage is not in the stack's app_env")
        self._blobs = BlobServiceClient.from_connection_string(connection)
        self._queues = QueueServiceClient.from_connection_string(connection)

        self.recorder = Recorder()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

        self._blob = BlobListener(
            self.app.of_kind(BlobFunction),
            self._blobs,
            self._queues,
            self.recorder,
            host_id=host_id,
            workers=workers,
            poll_interval=poll_interval,
            max_attempts=blob_max_attempts,
            retry_delay=blob_retry_delay,
            lease_seconds=60,
        )
        self._bus = QueueListener(
            self.app.of_kind(QueueFunction),
            self._queues,
            self.recorder,
            workers=workers,
            poll_interval=min(poll_interval, 0.5),
            lock_seconds=lock_seconds,
            max_delivery_count=max_delivery_count,
            max_delivery_counts=max_delivery_counts,
            retry_backoff=retry_backoff,
        )
        self._timers = [
            TimerListener(f, self.recorder) for f in self.app.of_kind(TimerFunction)
        ]
        http_functions = self.app.of_kind(HttpFunction)
        self._http = (
            HttpListener(
                http_functions,
                self.recorder,
                port=http_port,
                route_prefix=self.app.route_prefix,
            )
            if http_port is not None and http_functions
            else None
        )
        services = services_from_app_env(self.app_env) if dicom_events else []
        self._events = (
            DicomEventEmitter(
                services,
                self._queues.get_queue_client(EVENTS_QUEUE),
                Path(state_dir) / "dicom_events.sqlite",
                poll_interval=poll_interval,
                deletion_check_interval=deletion_check_interval,
            )
            if services
            else None
        )

    @property
    def http_port(self) -> int | None:
        """The port the HTTP triggers are served on (useful with ``http_port=0``)."""
        return self._http.port if self._http else None

    @property
    def invocations(self) -> list[Invocation]:
        """Every finished invocation so far, oldest first."""
        return self.recorder.records()

    def start(self) -> LocalHost:
        if self._started:
            raise HostError("this LocalHost was already started")
        self._started = True
        self._threads.append(
            threading.Thread(target=self._blob.run, args=(self._stop,), name="blobs")
        )
        self._threads.extend(self._bus.threads(self._stop))
        self._threads.extend(t.thread(self._stop) for t in self._timers)
        if self._events is not None:
            self._threads.append(
                threading.Thread(
                    target=self._events.run, args=(self._stop,), name="dicom-events"
                )
            )
        for thread in self._threads:
            thread.daemon = True
            thread.start()
        if self._http is not None:
            self._http.start()
        _log.info(
            "local host started: %d functions, http port %s",
            len(self.app.functions),
            self.http_port,
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling, let running functions finish (up to ``timeout`` s)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        if self._http is not None:
            self._http.stop(timeout)
        self._blob.shutdown(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._events is not None:
            self._events.close()
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            _log.warning("stopped with functions still running in %s", stuck)
        _log.info("local host stopped")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Run until the queues and unprocessed blobs are empty; False on timeout.

        Idle means: nothing running, every trigger queue empty (including messages
        waiting out a retry delay), no unprocessed blob, and no new invocation or
        event while every poller went through a whole cycle.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            activity = self._activity()
            marks = self._cycles()
            while time.monotonic() < deadline and not all(
                now >= mark + 2 for now, mark in zip(self._cycles(), marks, strict=True)
            ):
                time.sleep(0.05)
            if self._activity() == activity and not self._busy():
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cycles(self) -> list[int]:
        cycles = [self._blob.cycles]
        if self.app.of_kind(QueueFunction):
            cycles.append(self._bus.cycles)
        if self._events is not None:
            cycles.append(self._events.cycles)
        return cycles

    def _activity(self) -> int:
        emitted = self._events.emitted if self._events is not None else 0
        return self.recorder.activity + emitted

    def _busy(self) -> bool:
        return (
            self._blob.busy()
            or self._bus.busy()
            or any(t.busy() for t in self._timers)
            or (self._http is not None and self._http.busy())
        )


def main(argv: list[str] | None = None) -> int:
    """The CLI: run the host until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m localdev.host")
    parser.add_argument("--stack", default=".local/stack.json")
    parser.add_argument("--app", default="function_app")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--http-port", type=int, default=7071)
    parser.add_argument("--state-dir", default=".local/host")
    parser.add_argument("--host-id", default="localdev")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument(
        "--max-delivery-count",
        action="append",
        default=[],
        metavar="[QUEUE=]N",
        help="dead-letter after N deliveries (all queues, or QUEUE only)",
    )
    parser.add_argument("--no-dicom-events", action="store_true")
    parser.add_argument("--drain", action="store_true", help="exit once idle")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for noisy in ("azure", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    default_max, per_queue = _max_delivery(args.max_delivery_count)
    sys.path.insert(0, str(Path.cwd()))
    try:
        host = LocalHost(
            args.stack,
            app=args.app,
            workers=args.workers,
            http_port=args.http_port,
            state_dir=args.state_dir,
            host_id=args.host_id,
            poll_interval=args.poll_interval,
            max_delivery_count=default_max,
            max_delivery_counts=per_queue,
            dicom_events=not args.no_dicom_events,
        )
    except HostError as exc:
        _log.error("cannot host the app: %s", exc)
        return 2

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    host.start()
    if args.drain:
        drained = host.wait_idle(timeout=3600)
        host.stop()
        return 0 if drained else 1
    while not stopping.wait(0.5):
        pass
    host.stop()
    return 0


def _max_delivery(values: list[str]) -> tuple[int, dict[str, int]]:
    default, per_queue = 10, {}
    for value in values:
        queue, _, count = value.rpartition("=")
        if queue:
            per_queue[queue] = int(count)
        else:
            default = int(count)
    return default, per_queue


if __name__ == "__main__":
    sys.exit(main())
