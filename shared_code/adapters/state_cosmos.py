"""The state store on Azure Cosmos DB (NoSQL API), behind ``ports.StateStore``.

Containers are partitioned on ``/pk``. In Azure the Bicep creates the database and
its containers; ``create_if_missing`` creates them on first use for local tests.
Optimistic writes use the document's ``_etag`` with ``IfNotModified``.

``local_test_server`` adapts to @vercel/cosmosdb-server 1.0.1, the local stand-in
used by the adapter tests, which differs from Cosmos DB in these ways:

- its certificate is self-signed: TLS verification is turned off, for it only;
- a point read of a missing document fails with 500 (a TypeError in its
  read-document handler) instead of 404: ``get`` queries by ``pk`` and ``id``;
- a query scoped to a partition is refused (400 "missing partition keys") unless its
  text filters on the partition key: every such query says ``c.pk = @pk``, which
  Cosmos DB serves as well, so this is done everywhere;
- an upsert with ``If-Match`` on a missing document succeeds (Cosmos DB fails it):
  a conditional write is therefore a ``replace``, whose 404 means the race was lost;
- it never throttles (no 429, no ``x-ms-retry-after-ms``) nor checks the key, so
  those paths are only exercised by ``azure_errors``' translation.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.cosmos import ContainerProxy, CosmosClient, DatabaseProxy, PartitionKey
from azure.cosmos.exceptions import CosmosResourceNotFoundError

from shared_code.adapters.azure_errors import translated
from shared_code.adapters.state_sqlite import SYSTEM_FIELDS
from shared_code.errors import PreconditionFailed
from shared_code.ports import JsonDict

_log = logging.getLogger(__name__)

PARTITION_KEY_PATH = "/pk"
# Fields Cosmos DB sets itself; ``_etag`` and ``_ts`` are kept, as the SQLite store
# returns them too.
_DROPPED_SYSTEM_FIELDS = frozenset({"_rid", "_self", "_attachments"})
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CosmosStateStore:
    """``ports.StateStore`` on one Cosmos DB database."""

    def __init__(
        self,
        endpoint: str,
        credential_or_key: str | TokenCredential,
        database: str,
        *,
        create_if_missing: bool = False,
        local_test_server: bool = False,
    ) -> None:
        options: dict[str, Any] = {}
        if local_test_server:
            options["connection_verify"] = False
        self._client = CosmosClient(endpoint, credential=credential_or_key, **options)
        self._database_name = database
        self._create_if_missing = create_if_missing
        self._local_test_server = local_test_server
        self._database: DatabaseProxy | None = None
        self._containers: dict[str, ContainerProxy] = {}
        self._guard = threading.Lock()

    def get(self, container: str, pk: str, doc_id: str) -> JsonDict | None:
        if self._local_test_server:
            found = self._query(container, pk, {"id": doc_id})
            return found[0] if found else None

        proxy = self._container(container)
        with translated(f"state get {container}"):
            try:
                return _document(proxy.read_item(doc_id, partition_key=pk))
            except CosmosResourceNotFoundError as exc:
                # 404 with sub-status 0 is a missing document; the container's own
                # absence (1003) is a deployment error for the translation below.
                if exc.sub_status not in (None, 0):
                    raise
                return None

    def create(self, container: str, doc: JsonDict) -> JsonDict:
        proxy = self._container(container)
        with translated(f"state create {container}"):
            return _document(proxy.create_item(_body(doc)))

    def upsert(
        self, container: str, doc: JsonDict, *, if_match: str | None = None
    ) -> JsonDict:
        proxy = self._container(container)
        body = _body(doc)
        with translated(f"state upsert {container}"):
            if if_match is None:
                return _document(proxy.upsert_item(body))
            try:
                return _document(
                    proxy.replace_item(
                        body["id"],
                        body,
                        etag=if_match,
                        match_condition=MatchConditions.IfNotModified,
                    )
                )
            except CosmosResourceNotFoundError as exc:
                if exc.sub_status not in (None, 0):
                    raise
                raise PreconditionFailed(f"{container}: document gone") from None

    def query(self, container: str, pk: str | None, **equals: Any) -> list[JsonDict]:
        return self._query(container, pk, equals)

    def close(self) -> None:
        self._client.close()

    def _query(
        self, container: str, pk: str | None, equals: dict[str, Any]
    ) -> list[JsonDict]:
        conditions: list[str] = []
        parameters: list[dict[str, Any]] = []
        if pk is not None:
            conditions.append("c.pk = @pk")
            parameters.append({"name": "@pk", "value": pk})
        for index, (field, value) in enumerate(equals.items()):
            if not _FIELD.match(field):
                raise ValueError(f"query field {field!r} is not a plain name")
            conditions.append(f'c["{field}"] = @p{index}')
            parameters.append({"name": f"@p{index}", "value": value})
        text = "SELECT * FROM c"
        if conditions:
            text += " WHERE " + " AND ".join(conditions)

        scope: dict[str, Any] = (
            {"partition_key": pk}
            if pk is not None
            else {"enable_cross_partition_query": True}
        )
        proxy = self._container(container)
        with translated(f"state query {container}"):
            items = proxy.query_items(text, parameters=parameters, **scope)
            documents = [_document(item) for item in items]
        return sorted(documents, key=lambda doc: (doc["pk"], doc["id"]))

    def _container(self, name: str) -> ContainerProxy:
        with self._guard:
            proxy = self._containers.get(name)
            if proxy is None:
                proxy = self._open_container(name)
                self._containers[name] = proxy
            return proxy

    def _open_container(self, name: str) -> ContainerProxy:
        if not self._create_if_missing:
            database = self._client.get_database_client(self._database_name)
            return database.get_container_client(name)

        with translated(f"state create container {name}"):
            if self._database is None:
                self._database = self._client.create_database_if_not_exists(
                    self._database_name
                )
            _log.info("ensuring Cosmos container %s", name)
            return self._database.create_container_if_not_exists(
                name, partition_key=PartitionKey(path=PARTITION_KEY_PATH)
            )


def _body(doc: JsonDict) -> JsonDict:
    pk, doc_id = doc.get("pk"), doc.get("id")
    if not isinstance(pk, str) or not pk or not isinstance(doc_id, str) or not doc_id:
        raise ValueError("a state document needs non-empty string 'pk' and 'id'")
    return {key: value for key, value in doc.items() if key not in SYSTEM_FIELDS}


def _document(item: dict[str, Any]) -> JsonDict:
    return {
        key: value for key, value in item.items() if key not in _DROPPED_SYSTEM_FIELDS
    }
