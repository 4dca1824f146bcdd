"""The end-to-end fixtures: the local stack's clients and a running local host."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from localdev.scenario import (
    ROOT,
    Expected,
    Stack,
    Upload,
    build_uploads,
    expected_from,
    start_host,
    stop_host,
    wait_until,
)

HOST_LOG = ROOT / ".local" / "logs" / "host-e2e.log"
PIPELINE_TIMEOUT = 600
QUIET_SECONDS = 8


class HostProcess:
    """The local Functions host as its own process; a test may kill and restart it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_host(HOST_LOG)
        up = wait_until(self._healthy, timeout=60, interval=0.5)
        assert up, f"the local host did not start: see {HOST_LOG}"

    def kill(self) -> None:
        """Stop abruptly, as a crashed or recycled worker would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_host(self.process)

    def _healthy(self) -> bool:
        try:
            return requests.get("http://127.0.0.1:7071/api/health", timeout=2).ok
        except requests.RequestException:
            return False


@pytest.fixture(scope="session")
def local_stack(stack: dict) -> Stack:  # the stack fixture fails early when it is down
    return Stack()


@pytest.fixture(scope="session")
def host(local_stack: Stack) -> Iterator[HostProcess]:
    process = HostProcess()
    process.start()
    yield process
    process.stop()


def wait_idle(local_stack: Stack, timeout: float = PIPELINE_TIMEOUT) -> None:
    """Wait until no upload or message has been left for ``QUIET_SECONDS``.

    Archiving makes the archive emit change events a poll later, so one empty look at
    the queues is not enough.
    """
    quiet_since: list[float] = []

    def quiet() -> bool:
        if local_stack.pending():
            quiet_since.clear()
            return False
        if not quiet_since:
            quiet_since.append(time.monotonic())
        return time.monotonic() - quiet_since[0] >= QUIET_SECONDS

    assert wait_until(quiet, timeout=timeout, interval=1), "the pipeline did not settle"


@pytest.fixture(scope="session")
def scenario(local_stack: Stack, host: HostProcess) -> tuple[list[Upload], Expected]:
    """The demo's uploads, run through the pipeline once for the whole session."""
    uploads = build_uploads()
    for upload in uploads:
        local_stack.upload(upload)
    wait_idle(local_stack)
    return uploads, expected_from(uploads)
