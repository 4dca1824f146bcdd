"""One contract for both state stores: SQLite (local) and Cosmos DB (cosmosdb-server).

The Cosmos half runs against @vercel/cosmosdb-server from the local stack; the same
tests must pass on both, so that the local store fails exactly as Cosmos DB does.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.cosmos.exceptions import CosmosHttpResponseError

from shared_code.adapters.azure_errors import translate
from shared_code.adapters.state_cosmos import CosmosStateStore
from shared_code.adapters.state_sqlite import SqliteStateStore
from shared_code.errors import AlreadyExists, PreconditionFailed, RetryLater
from shared_code.ports import StateStore

pytestmark = pytest.mark.filterwarnings(
    # cosmosdb-server's certificate is self-signed; verification is off for it only.
    "ignore::urllib3.exceptions.InsecureRequestWarning"
)


@pytest.fixture(params=["sqlite", "cosmos"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "sqlite":
        sqlite_store = SqliteStateStore(tmp_path / "state.db")
        yield sqlite_store
        sqlite_store.close()
        return

    stack: dict[str, Any] = request.getfixturevalue("stack")
    cosmos_store = CosmosStateStore(
        stack["cosmos"]["endpoint"],
        stack["cosmos"]["key"],
        "exchange-tests",
        create_if_missing=True,
        local_test_server=True,
    )
    yield cosmos_store
    cosmos_store.close()


@pytest.fixture
def container() -> str:
    """A container of its own for each test, so runs never see each other's data."""
    return f"c-{uuid.uuid4().hex[:12]}"


def _upload(pk: str = "trust-a", doc_id: str = "u1", **fields: Any) -> dict[str, Any]:
    return {"pk": pk, "id": doc_id, "blob": "uploads/trust-a/a.dcm", **fields}


def test_create_then_get_returns_the_document_with_an_etag(
    store: StateStore, container: str
) -> None:
    created = store.create(container, _upload(outcome="stored", instances=3))

    read = store.get(container, "trust-a", "u1")

    assert read is not None
    assert read["outcome"] == "stored"
    assert read["instances"] == 3
    assert read["_etag"] == created["_etag"]
    assert "_rid" not in read


def test_get_of_a_missing_document_is_none(store: StateStore, container: str) -> None:
    store.create(container, _upload())

    assert store.get(container, "trust-a", "nope") is None
    assert store.get(container, "trust-b", "u1") is None


def test_create_of_a_taken_key_is_already_exists(
    store: StateStore, container: str
) -> None:
    store.create(container, _upload())

    with pytest.raises(AlreadyExists):
        store.create(container, _upload(outcome="again"))
    store.create(container, _upload(pk="trust-b"))  # same id, other partition


def test_upsert_inserts_then_replaces_with_a_new_etag(
    store: StateStore, container: str
) -> None:
    first = store.upsert(container, _upload(outcome="pending"))
    second = store.upsert(container, _upload(outcome="stored"))

    read = store.get(container, "trust-a", "u1")
    assert read is not None
    assert read["outcome"] == "stored"
    assert first["_etag"] != second["_etag"] == read["_etag"]


def test_upsert_with_the_current_etag_wins_and_a_stale_one_fails(
    store: StateStore, container: str
) -> None:
    read = store.create(container, _upload(outcome="pending"))
    read["outcome"] = "stored"  # written back as read, system fields and all

    updated = store.upsert(container, read, if_match=read["_etag"])

    with pytest.raises(PreconditionFailed):
        store.upsert(container, _upload(outcome="lost"), if_match=read["_etag"])
    final = store.get(container, "trust-a", "u1")
    assert final is not None
    assert final["outcome"] == "stored"
    assert final["_etag"] == updated["_etag"]


def test_upsert_with_an_etag_of_a_missing_document_fails(
    store: StateStore, container: str
) -> None:
    store.create(container, _upload(doc_id="other"))

    with pytest.raises(PreconditionFailed):
        store.upsert(container, _upload(), if_match="an-etag-never-issued")
    assert store.get(container, "trust-a", "u1") is None


def test_query_in_one_partition_and_across_partitions(
    store: StateStore, container: str
) -> None:
    store.create(container, _upload("trust-a", "u1", outcome="stored"))
    store.create(container, _upload("trust-a", "u2", outcome="quarantined"))
    store.create(container, _upload("trust-b", "u3", outcome="stored"))

    in_partition = store.query(container, "trust-a", outcome="stored")
    across = store.query(container, None, outcome="stored")
    everything = store.query(container, "trust-a")

    assert [doc["id"] for doc in in_partition] == ["u1"]
    assert [(doc["pk"], doc["id"]) for doc in across] == [
        ("trust-a", "u1"),
        ("trust-b", "u3"),
    ]
    assert [doc["id"] for doc in everything] == ["u1", "u2"]
    assert all(doc["_etag"] for doc in everything)


def test_query_compares_values_with_their_json_types(
    store: StateStore, container: str
) -> None:
    store.create(container, _upload(doc_id="t", flag=True, count=1, note=None))
    store.create(container, _upload(doc_id="n", flag=1, count="1"))
    store.create(container, _upload(doc_id="m", detail={"step": "ingest"}))

    def ids(**equals: Any) -> list[str]:
        return [doc["id"] for doc in store.query(container, "trust-a", **equals)]

    assert ids(flag=True) == ["t"]
    assert ids(flag=1) == ["n"]
    assert ids(count=1) == ["t"]
    assert ids(count="1") == ["n"]
    assert ids(note=None) == ["t"]  # an explicit null, not a missing field
    assert ids(detail={"step": "ingest"}) == ["m"]
    assert ids(flag=True, count=1) == ["t"]
    assert ids(flag=False) == []


def test_query_refuses_a_field_that_is_not_a_plain_name(
    store: StateStore, container: str
) -> None:
    with pytest.raises(ValueError):
        store.query(container, "trust-a", **{"x = 1 OR 1": 1})


def test_two_concurrent_upserts_with_the_same_etag_exactly_one_wins(
    store: StateStore, container: str
) -> None:
    read = store.create(container, {"pk": "s1", "id": "s1", "status": "requested"})
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def transfer(status: str) -> None:
        start.wait()
        try:
            store.upsert(
                container,
                {"pk": "s1", "id": "s1", "status": status},
                if_match=read["_etag"],
            )
            outcomes[status] = "won"
        except PreconditionFailed:
            outcomes[status] = "lost"

    threads = [threading.Thread(target=transfer, args=(s,)) for s in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes.values()) == ["lost", "won"]
    winner = next(status for status, outcome in outcomes.items() if outcome == "won")
    final = store.get(container, "s1", "s1")
    assert final is not None
    assert final["status"] == winner


def _count_up(path: str, times: int, start: Any) -> None:
    """In a child process: increment a counter by optimistic read-modify-write."""
    store = SqliteStateStore(path)
    start.wait()  # both processes count at once, not one after the other
    for _ in range(times):
        while True:
            share = store.get("shares", "s1", "s1")
            assert share is not None
            share["copied"] += 1
            try:
                store.upsert("shares", share, if_match=share["_etag"])
                break
            except PreconditionFailed:
                continue
    store.close()


def test_sqlite_store_shared_by_two_processes_loses_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = SqliteStateStore(path)
    store.create("shares", {"pk": "s1", "id": "s1", "copied": 0})
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)

    workers = [
        spawn.Process(target=_count_up, args=(path, 200, start)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert [worker.exitcode for worker in workers] == [0, 0]
    share = store.get("shares", "s1", "s1")
    assert share is not None
    assert share["copied"] == 400
    store.close()


def test_sqlite_lock_held_past_the_busy_timeout_is_retry_later(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, busy_timeout_s=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RetryLater):
            store.upsert("uploads", _upload())
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.upsert("uploads", _upload())  # the lock gone, the same write works
    store.close()


class _CosmosResponse:
    """The little of an HTTP response that CosmosHttpResponseError reads."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers
        self.reason = "rigged"

    def text(self) -> str:
        return ""


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (429, {"x-ms-retry-after-ms": "1500"}, RetryLater, 1.5),
        (503, {}, RetryLater, None),
        (408, {}, RetryLater, None),
        (409, {}, AlreadyExists, None),
        (412, {}, PreconditionFailed, None),
    ],
)
def test_cosmos_status_codes_translate_as_documented(
    status: int,
    headers: dict[str, str],
    expected: type[Exception],
    retry_after: float | None,
) -> None:
    # cosmosdb-server never throttles, so the SDK's own error class is fed directly.
    error = CosmosHttpResponseError(
        status_code=status,
        message="rigged",
        response=_CosmosResponse(status, headers),
    )

    translated = translate(error, "state upsert")

    assert type(translated) is expected
    if isinstance(translated, RetryLater):
        assert translated.retry_after == retry_after
