"""Leases on a real SQLite state store: one holder at a time, and expiry frees them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shared_code.adapters.state_sqlite import SqliteStateStore
from shared_code.errors import RetryLater
from shared_code.services.locks import lease


@pytest.fixture
def state(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(tmp_path / "state.db")


def test_a_held_lease_makes_the_second_worker_wait_or_retry_later(state) -> None:
    with lease(state, "fhir-sync:trust-a"):
        with pytest.raises(RetryLater), lease(state, "fhir-sync:trust-a", wait=0.2):
            pass
        with lease(state, "fhir-sync:trust-b", wait=0.2):
            pass  # another tenant's lease is independent

    with lease(state, "fhir-sync:trust-a", wait=0.2):
        pass  # released on exit


def test_an_expired_lease_is_taken_over(state) -> None:
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731 - a settable clock

    with lease(state, "x", ttl=10, clock=clock):
        now[0] += 11  # the holder has crashed or stalled past its ttl
        with lease(state, "x", ttl=10, wait=0, clock=clock):
            pass


def test_threads_never_hold_one_lease_at_once(state) -> None:
    inside = []
    overlaps = []

    def worker() -> None:
        for _ in range(20):
            with lease(state, "shared", wait=30):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == []
