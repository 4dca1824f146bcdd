"""The local state store (``ports.StateStore``): JSON documents in one SQLite file.

It stands in for Cosmos DB and behaves like it where the use cases can tell: documents
are keyed by ``(pk, id)`` within a container, every write sets a new ``_etag``, a taken
key on create is ``AlreadyExists`` and a lost optimistic write ``PreconditionFailed``.
One table holds every container. WAL mode, one connection per thread and a busy
timeout make it safe for the host's threads and for several processes; a lock held
past the timeout is ``RetryLater``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared_code.errors import AlreadyExists, PreconditionFailed, RetryLater
from shared_code.ports import JsonDict

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    container TEXT NOT NULL,
    pk TEXT NOT NULL,
    id TEXT NOT NULL,
    etag TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (container, pk, id)
) WITHOUT ROWID
"""
# Fields Cosmos DB sets itself; a document read and written back must not carry them.
SYSTEM_FIELDS = frozenset({"_etag", "_ts", "_rid", "_self", "_attachments"})
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SqliteStateStore:
    """``ports.StateStore`` on the SQLite database at ``path`` (created if missing)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self._path = str(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        with self._errors("open"):
            self._connection().execute(_SCHEMA)

    def get(self, container: str, pk: str, doc_id: str) -> JsonDict | None:
        with self._errors("get"):
            row = (
                self._connection()
                .execute(
                    "SELECT body, etag, ts FROM documents"
                    " WHERE container = ? AND pk = ? AND id = ?",
                    (container, pk, doc_id),
                )
                .fetchone()
            )
        return None if row is None else _document(*row)

    def create(self, container: str, doc: JsonDict) -> JsonDict:
        pk, doc_id, body = _split(doc)
        etag, ts = _new_version()
        with self._errors("create"):
            try:
                self._connection().execute(
                    "INSERT INTO documents (container, pk, id, etag, ts, body)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (container, pk, doc_id, etag, ts, body),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"{container}: ({pk}, {doc_id}) exists") from None
        return _document(body, etag, ts)

    def upsert(
        self, container: str, doc: JsonDict, *, if_match: str | None = None
    ) -> JsonDict:
        pk, doc_id, body = _split(doc)
        etag, ts = _new_version()
        key = (container, pk, doc_id)

        with self._errors("upsert"), self._write_transaction() as connection:
            if if_match is not None:
                row = connection.execute(
                    "SELECT etag FROM documents"
                    " WHERE container = ? AND pk = ? AND id = ?",
                    key,
                ).fetchone()
                if row is None or row[0] != if_match:
                    raise PreconditionFailed(f"{container}: {doc_id} changed")
            connection.execute(
                "INSERT INTO documents (container, pk, id, etag, ts, body)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (container, pk, id) DO UPDATE SET"
                " etag = excluded.etag, ts = excluded.ts, body = excluded.body",
                (*key, etag, ts, body),
            )
        return _document(body, etag, ts)

    def query(self, container: str, pk: str | None, **equals: Any) -> list[JsonDict]:
        sql = ["SELECT body, etag, ts FROM documents WHERE container = ?"]
        params: list[Any] = [container]
        if pk is not None:
            sql.append("pk = ?")
            params.append(pk)
        for field, value in equals.items():
            condition, values = _equals(field, value)
            sql.append(condition)
            params.extend(values)

        with self._errors("query"):
            rows = (
                self._connection()
                .execute(" AND ".join(sql) + " ORDER BY pk, id", params)
                .fetchall()
            )
        return [_document(*row) for row in rows]

    def close(self) -> None:
        """Close every thread's connection; call when no thread uses the store."""
        with self._guard:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # Autocommit (isolation_level=None): transactions are opened explicitly;
            # ``timeout`` is SQLite's busy timeout, waiting on other writers' locks.
            connection = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.execute(
                f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}"
            )
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
            with self._guard:
                self._connections.append(connection)
        return connection

    @contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock before the read, so a compare-and-set
        # cannot interleave with another writer's, in this process or another.
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            # "database is locked" past the busy timeout, or the disk: both pass.
            _log.warning("state store %s failed: %s", what, exc)
            raise RetryLater(f"state store {what}: {exc}", retry_after=1.0) from exc


def _split(doc: JsonDict) -> tuple[str, str, str]:
    pk, doc_id = doc.get("pk"), doc.get("id")
    if not isinstance(pk, str) or not pk or not isinstance(doc_id, str) or not doc_id:
        raise ValueError("a state document needs non-empty string 'pk' and 'id'")
    body = {key: value for key, value in doc.items() if key not in SYSTEM_FIELDS}
    return pk, doc_id, json.dumps(body, separators=(",", ":"))


def _new_version() -> tuple[str, int]:
    return uuid.uuid4().hex, int(time.time())


def _document(body: str, etag: str, ts: int) -> JsonDict:
    document: JsonDict = json.loads(body)
    document["_etag"] = etag
    document["_ts"] = ts
    return document


def _equals(field: str, value: Any) -> tuple[str, list[Any]]:
    """A condition matching Cosmos DB's ``c.field = value``: types must agree (true is
    not 1), and null matches an explicit null only, not a missing field."""
    if not _FIELD.match(field):
        raise ValueError(f"query field {field!r} is not a plain name")
    path = f'$."{field}"'
    kind = "json_type(body, ?)"
    if value is None:
        return f"{kind} = 'null'", [path]
    if isinstance(value, bool):
        return f"{kind} = ?", [path, "true" if value else "false"]
    if isinstance(value, int | float):
        return (
            f"{kind} IN ('integer', 'real') AND json_extract(body, ?) = ?",
            [path, path, value],
        )
    if isinstance(value, str):
        return f"{kind} = 'text' AND json_extract(body, ?) = ?", [path, path, value]
    return (
        f"{kind} IN ('object', 'array') AND json_extract(body, ?) = json(?)",
        [path, path, json.dumps(value, separators=(",", ":"))],
    )
