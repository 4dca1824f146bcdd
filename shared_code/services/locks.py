"""Leases in the state store: one holder at a time for work that must not overlap.

Used where two workers of one tenant would race on the same resources, such as FHIR
sync creating one Patient twice. A lease expires by itself, so a crashed holder blocks
the others for ``ttl`` seconds at most. Works alike on Cosmos DB and SQLite: it needs
only create-only writes and If-Match.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from shared_code.errors import AlreadyExists, PreconditionFailed, RetryLater
from shared_code.ports import StateStore

LOCKS = "locks"
_PK = "locks"


@contextmanager
def lease(
    state: StateStore,
    name: str,
    *,
    ttl: float = 60.0,
    wait: float = 30.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the lease ``name`` while the block runs; ``RetryLater`` after ``wait`` s."""
    holder = str(uuid.uuid4())
    deadline = clock() + wait
    delay = 0.05
    while not _try_acquire(state, name, holder, ttl, clock):
        if clock() >= deadline:
            raise RetryLater(f"lease {name} is held by another worker", retry_after=2)
        sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        _release(state, name, holder)


def _try_acquire(
    state: StateStore, name: str, holder: str, ttl: float, clock: Callable[[], float]
) -> bool:
    doc = {"id": name, "pk": _PK, "holder": holder, "expires_at": clock() + ttl}
    try:
        state.create(LOCKS, doc)
        return True
    except AlreadyExists:
        pass
    current = state.get(LOCKS, _PK, name)
    if current is None:
        return False  # released and removed meanwhile: try again
    if current.get("expires_at", 0) > clock():
        return False
    try:
        state.upsert(LOCKS, doc, if_match=current["_etag"])
        return True
    except PreconditionFailed:
        return False


def _release(state: StateStore, name: str, holder: str) -> None:
    current = state.get(LOCKS, _PK, name)
    if current is None or current.get("holder") != holder:
        return  # expired and taken over: not ours to release
    released = {"id": name, "pk": _PK, "holder": "", "expires_at": 0}
    # Losing this race means another worker took an expired lease: fine.
    with suppress(PreconditionFailed):
        state.upsert(LOCKS, released, if_match=current["_etag"])
