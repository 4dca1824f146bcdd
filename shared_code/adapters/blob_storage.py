"""The blob store on Azure Blob Storage (Azurite locally), behind ``ports.BlobStore``.

One ``BlobServiceClient`` is built once and reused (its connection pool and
credential); every SDK error leaves through ``azure_errors.translated``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobClient, BlobServiceClient, ContentSettings

from shared_code.adapters.azure_errors import translate, translated
from shared_code.errors import Quarantine, RetryLater
from shared_code.ports import BlobVersion

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_log = logging.getLogger(__name__)

# One ranged GET per 4 MiB: the SDK's own default chunk size.
_READ_CHUNK = 4 * 1024 * 1024


def blob_store_from_settings(
    connection_string: str = "", account_url: str = "", client_id: str = ""
) -> AzureBlobStore:
    """The blob store for a connection string (Azurite: its 127.0.0.1 endpoints, or
    ``UseDevelopmentStorage=true``) or, in Azure, an account URL reached with the
    Function App's managed identity (``client_id`` for a user-assigned one)."""
    if connection_string:
        service = BlobServiceClient.from_connection_string(connection_string)
    elif account_url:
        service = BlobServiceClient(account_url, credential=azure_credential(client_id))
    else:
        raise ValueError("blob store: give a connection string or an account URL")
    return AzureBlobStore(service)


def azure_credential(client_id: str = "") -> TokenCredential:
    """The managed identity with ``client_id`` (user-assigned), else the default chain
    (system-assigned identity in Azure, developer sign-in on a workstation)."""
    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()


class AzureBlobStore:
    """``ports.BlobStore`` on one storage account."""

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    def read(self, container: str, name: str) -> bytes:
        with translated("blob read", not_found=_missing(container, name)):
            return self._blob(container, name).download_blob().readall()

    def open_read(self, container: str, name: str) -> tuple[BinaryIO, BlobVersion]:
        blob = self._blob(container, name)
        with translated("blob open", not_found=_missing(container, name)):
            properties = blob.get_blob_properties()
        version = BlobVersion(size=int(properties.size), etag=str(properties.etag))
        raw = _BlobRangeReader(blob, version.size, version.etag)
        return io.BufferedReader(raw, buffer_size=_READ_CHUNK), version

    def size(self, container: str, name: str) -> int:
        with translated("blob size", not_found=_missing(container, name)):
            return int(self._blob(container, name).get_blob_properties().size)

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
        blob = self._blob(container, name)
        settings = ContentSettings(content_type=content_type)

        start = data.tell() if not isinstance(data, bytes) else 0

        def upload() -> None:
            if not isinstance(data, bytes):
                data.seek(start)  # a second attempt sends the stream again
            blob.upload_blob(
                data,
                overwrite=overwrite,
                content_settings=settings,
                metadata=dict(metadata or {}),
            )

        with translated("blob write"):
            try:
                upload()
            except ResourceNotFoundError as exc:
                # In Azure the Bicep creates the containers; a fresh Azurite has none.
                if getattr(exc, "error_code", None) != "ContainerNotFound":
                    raise
                self._create_container(container)
                upload()

    def exists(self, container: str, name: str) -> bool:
        with translated("blob exists"):
            return bool(self._blob(container, name).exists())

    def delete(self, container: str, name: str, *, if_match: str = "") -> None:
        conditions: dict[str, Any] = {}
        if if_match:
            conditions = {
                "etag": if_match,
                "match_condition": MatchConditions.IfNotModified,
            }
        with translated("blob delete"), contextlib.suppress(ResourceNotFoundError):
            self._blob(container, name).delete_blob(
                delete_snapshots="include", **conditions
            )

    def list_names(self, container: str, prefix: str = "") -> list[str]:
        client = self._service.get_container_client(container)
        with translated("blob list"):
            try:
                return [
                    blob.name
                    for blob in client.list_blobs(name_starts_with=prefix or None)
                ]
            except ResourceNotFoundError:
                return []

    def close(self) -> None:
        self._service.close()

    def _blob(self, container: str, name: str) -> BlobClient:
        return self._service.get_blob_client(container, name)

    def _create_container(self, container: str) -> None:
        _log.info("creating blob container %s", container)
        with contextlib.suppress(ResourceExistsError):
            self._service.create_container(container)


def _missing(container: str, name: str) -> Callable[[], Quarantine]:
    def build() -> Quarantine:
        return Quarantine("blob_missing", f"{container}/{name}")

    return build


class _BlobRangeReader(io.RawIOBase):
    """A seekable, read-only file over one blob, fetched range by range.

    The SDK's ``StorageStreamDownloader`` reads in chunks but only forwards and is no
    ``io`` object; ZIP uploads need ``seek`` (the central directory is at the end),
    so each read downloads the range it needs. The ETag seen at open pins the
    version: a blob replaced while being read fails rather than mixing versions.
    """

    def __init__(self, blob: BlobClient, size: int, etag: str) -> None:
        self._blob = blob
        self._size = size
        self._etag = etag
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}
        position = base[whence] + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        length = min(len(view), self._size - self._position)
        if length <= 0:
            return 0

        try:
            chunk = self._blob.download_blob(
                offset=self._position,
                length=length,
                etag=self._etag,
                match_condition=MatchConditions.IfNotModified,
            ).readall()
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 412:
                raise RetryLater("blob stream: blob replaced while reading") from exc
            raise translate(exc, "blob stream") from exc

        view[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)
