"""The small interfaces through which the use cases reach outside systems.

Each port has an Azure adapter and a local adapter in ``shared_code.adapters``; both
translate their failures into ``shared_code.errors`` so that they fail alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class BlobVersion:
    """Which version of a blob was read: its size and ETag."""

    size: int
    etag: str


class BlobStore(Protocol):
    """Containers of named blobs (Azure Blob Storage; Azurite locally)."""

    def read(self, container: str, name: str) -> bytes:
        """Whole blob; ``Quarantine('blob_missing', ...)`` when it does not exist."""

    def open_read(self, container: str, name: str) -> tuple[BinaryIO, BlobVersion]:
        """A seekable stream of one version of the blob, read in chunks as needed.

        A blob replaced while it is read raises ``RetryLater``, never mixes versions.
        """

    def size(self, container: str, name: str) -> int:
        """Size in bytes, without reading the content."""

    def write(
        self,
        container: str,
        name: str,
        data: bytes | BinaryIO,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = True,
    ) -> None:
        """Write a blob; ``overwrite=False`` on an existing one: ``AlreadyExists``."""

    def exists(self, container: str, name: str) -> bool: ...

    def delete(self, container: str, name: str, *, if_match: str = "") -> None:
        """Delete if present; deleting a missing blob is not an error.

        With ``if_match`` (an ETag) a blob replaced since raises ``PreconditionFailed``.
        """

    def list_names(self, container: str, prefix: str = "") -> list[str]: ...


class MessageBus(Protocol):
    """Queues of JSON messages (Service Bus; Azurite queues locally)."""

    def send(
        self,
        queue: str,
        body: Mapping[str, Any],
        *,
        message_id: str,
        delay: float = 0.0,
    ) -> None:
        """Send one message, delivered after ``delay`` seconds.

        ``message_id`` lets Service Bus drop duplicates.
        """


@dataclass(frozen=True)
class StoreOutcome:
    """What the archive said about one instance sent by STOW-RS."""

    sop_instance_uid: str
    stored: bool
    already_present: bool = False
    failure_reason: int | None = None


class DicomArchive(Protocol):
    """One tenant's DICOMweb service (AHDS DICOM; Orthanc + DICOMweb plugin locally)."""

    @property
    def dicomweb_root(self) -> str:
        """The DICOMweb base URL, as an Endpoint.address in FHIR."""

    def store_instance(self, part10: bytes) -> StoreOutcome:
        """STOW-RS one Part 10 instance. A copy already held is ``already_present``."""

    def search_studies(self, study_instance_uid: str | None = None) -> list[JsonDict]:
        """QIDO-RS studies, DICOM JSON, with the study-level attributes FHIR needs."""

    def search_series(self, study_instance_uid: str) -> list[JsonDict]: ...

    def search_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[JsonDict]: ...

    def retrieve_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> bytes:
        """WADO-RS one instance as Part 10 bytes; missing: ``Quarantine``."""


class FhirStore(Protocol):
    """One tenant's FHIR R4 service (AHDS FHIR; a local R4 server)."""

    @property
    def base_url(self) -> str: ...

    def read(self, resource_type: str, resource_id: str) -> JsonDict | None: ...

    def search(
        self, resource_type: str, params: Mapping[str, str]
    ) -> list[JsonDict]: ...

    def conditional_create(self, resource: JsonDict, if_none_exist: str) -> JsonDict:
        """POST with If-None-Exist; returns the stored or already existing resource."""

    def conditional_update(self, resource: JsonDict, search: str) -> JsonDict:
        """PUT ``{type}?{search}``: creates or replaces the one match; returns it."""

    def update(self, resource: JsonDict, *, if_match: str) -> JsonDict:
        """PUT ``{type}/{id}`` only if the stored version is still ``if_match`` (its
        ``meta.versionId``); another writer came first: ``PreconditionFailed``."""


@dataclass(frozen=True)
class ArchiveChange:
    """One entry of a DICOM service's change feed, reduced to what FHIR sync needs."""

    study_instance_uid: str
    action: str  # create / update / delete
    sequence: int


@dataclass(frozen=True)
class ChangePage:
    """A page of the change feed and the checkpoint to read the next one from."""

    changes: list[ArchiveChange]
    checkpoint: JsonDict
    done: bool


@runtime_checkable
class ChangeFeed(Protocol):
    """An archive's log of instance changes (AHDS v2 change feed; Orthanc /changes)."""

    def read_changes(self, checkpoint: JsonDict | None, limit: int) -> ChangePage:
        """The changes after ``checkpoint`` (``None``: from the start). The returned
        checkpoint is opaque to the caller; it is stored and passed back as is."""


class StateStore(Protocol):
    """JSON documents in named containers (Cosmos DB; SQLite locally).

    Documents carry ``id`` and ``pk`` (the partition key); ``_etag`` is set on read.
    """

    def get(self, container: str, pk: str, doc_id: str) -> JsonDict | None: ...

    def create(self, container: str, doc: JsonDict) -> JsonDict:
        """Insert; raises ``AlreadyExists`` when ``(pk, id)`` is taken."""

    def upsert(
        self, container: str, doc: JsonDict, *, if_match: str | None = None
    ) -> JsonDict:
        """Insert or replace; ``if_match`` makes a lost race ``PreconditionFailed``."""

    def query(self, container: str, pk: str | None, **equals: Any) -> list[JsonDict]:
        """Documents whose top-level fields equal the given values, in partition ``pk``
        (``None``: across partitions, for the rare reads that need it)."""


class Clock(Protocol):
    def now(self) -> datetime: ...


@dataclass(frozen=True)
class DicomEvent:
    """An Event Grid DICOM event, as AHDS delivers it to the events queue."""

    event_type: str  # Microsoft.HealthcareApis.DicomImageCreated / Deleted / Updated
    partition_name: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    service_host_name: str
    sequence_number: int
    event_id: str = ""
    extra: JsonDict = field(default_factory=dict)
