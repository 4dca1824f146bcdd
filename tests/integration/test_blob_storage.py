"""The blob store against Azurite, and its error translation against rigged answers."""

from __future__ import annotations

import io
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from azure.storage.blob import BlobServiceClient

from shared_code.adapters.blob_storage import AzureBlobStore, blob_store_from_settings
from shared_code.errors import AlreadyExists, PreconditionFailed, Quarantine, RetryLater

# Azurite's well-known development account key (public, not a secret).
_DEV_ACCOUNT = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
    "KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
)


@pytest.fixture(scope="module")
def connection_string(stack: dict[str, Any]) -> str:
    return str(stack["azurite"]["connection_string"])


@pytest.fixture
def blobs(connection_string: str) -> Iterator[AzureBlobStore]:
    store = blob_store_from_settings(connection_string=connection_string)
    yield store
    store.close()


@pytest.fixture
def container() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _part10_like(size: int) -> bytes:
    """Deterministic bytes that are not one repeated block (a shifted read shows)."""
    pattern = bytes(range(251))
    return (pattern * (size // len(pattern) + 1))[:size]


def test_write_then_read_size_and_properties(
    blobs: AzureBlobStore, container: str, connection_string: str
) -> None:
    blobs.write(
        container,
        "trust-a/abc.dcm",
        b"DICM-bytes",
        content_type="application/dicom",
        metadata={"tenant": "trust-a"},
    )

    assert blobs.read(container, "trust-a/abc.dcm") == b"DICM-bytes"
    assert blobs.size(container, "trust-a/abc.dcm") == 10
    assert blobs.exists(container, "trust-a/abc.dcm")
    service = BlobServiceClient.from_connection_string(connection_string)
    properties = service.get_blob_client(
        container, "trust-a/abc.dcm"
    ).get_blob_properties()
    assert properties.content_settings.content_type == "application/dicom"
    assert properties.metadata == {"tenant": "trust-a"}


def test_missing_blob_is_quarantined_as_blob_missing(
    blobs: AzureBlobStore, container: str
) -> None:
    blobs.write(container, "present.dcm", b"x")

    for call in (blobs.read, blobs.size, blobs.open_read):
        with pytest.raises(Quarantine) as caught:
            call(container, "absent.dcm")
        assert caught.value.reason == "blob_missing"
    with pytest.raises(Quarantine):
        blobs.read(f"{container}-none", "absent.dcm")  # no container at all
    assert not blobs.exists(container, "absent.dcm")


def test_write_without_overwrite_on_an_existing_blob_is_already_exists(
    blobs: AzureBlobStore, container: str
) -> None:
    blobs.write(container, "a.dcm", b"first", overwrite=False)

    with pytest.raises(AlreadyExists):
        blobs.write(container, "a.dcm", b"second", overwrite=False)
    blobs.write(container, "a.dcm", b"third")
    assert blobs.read(container, "a.dcm") == b"third"


def test_delete_and_list_names_by_prefix(blobs: AzureBlobStore, container: str) -> None:
    for name in ("trust-a/1.dcm", "trust-a/2.dcm", "trust-b/3.dcm"):
        blobs.write(container, name, b"x")

    blobs.delete(container, "trust-a/1.dcm")
    blobs.delete(container, "trust-a/1.dcm")  # missing: not an error

    assert blobs.list_names(container, "trust-a/") == ["trust-a/2.dcm"]
    assert blobs.list_names(container) == ["trust-a/2.dcm", "trust-b/3.dcm"]
    assert blobs.list_names(f"{container}-none") == []


def test_delete_if_match_spares_a_blob_replaced_since_it_was_read(
    blobs: AzureBlobStore, container: str
) -> None:
    blobs.write(container, "upload.dcm", b"first")
    _, first = blobs.open_read(container, "upload.dcm")
    blobs.write(container, "upload.dcm", b"second version")

    with pytest.raises(PreconditionFailed):
        blobs.delete(container, "upload.dcm", if_match=first.etag)
    _, second = blobs.open_read(container, "upload.dcm")
    blobs.delete(container, "upload.dcm", if_match=second.etag)

    assert not blobs.exists(container, "upload.dcm")


def test_write_takes_a_stream(blobs: AzureBlobStore, container: str) -> None:
    data = _part10_like(300_000)

    blobs.write(container, "streamed.dcm", io.BytesIO(data))

    assert blobs.read(container, "streamed.dcm") == data


def test_open_read_streams_a_large_blob_in_chunks_and_seeks(
    blobs: AzureBlobStore, container: str
) -> None:
    data = _part10_like(9 * 1024 * 1024 + 123)
    blobs.write(container, "big.dcm", data)

    stream, version = blobs.open_read(container, "big.dcm")
    assert version.size == len(data)
    with stream:
        chunks = iter(lambda: stream.read(1024 * 1024), b"")
        assert b"".join(chunks) == data
        stream.seek(-100, io.SEEK_END)
        assert stream.read() == data[-100:]
        stream.seek(128)
        assert stream.read(4) == data[128:132]


def test_open_read_serves_zipfile_which_needs_seek(
    blobs: AzureBlobStore, container: str
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("series1/1.dcm", _part10_like(5000))
        writer.writestr("series1/2.dcm", b"second")
    blobs.write(container, "upload.zip", archive.getvalue())

    stream, _ = blobs.open_read(container, "upload.zip")
    with stream, zipfile.ZipFile(stream) as reader:
        assert reader.namelist() == ["series1/1.dcm", "series1/2.dcm"]
        assert reader.read("series1/1.dcm") == _part10_like(5000)


def test_blob_replaced_while_streaming_is_retry_later(
    blobs: AzureBlobStore, container: str
) -> None:
    blobs.write(container, "moving.dcm", _part10_like(10_000))

    stream, _ = blobs.open_read(container, "moving.dcm")
    with stream:
        blobs.write(container, "moving.dcm", b"replaced")
        with pytest.raises(RetryLater):
            stream.read()


def test_unreachable_storage_is_retry_later(container: str) -> None:
    # Port 9 (discard) is closed on loopback; no SDK retries, to fail at once.
    service = BlobServiceClient.from_connection_string(
        _DEV_ACCOUNT.format(port=9), retry_total=0
    )
    blobs = AzureBlobStore(service)

    with pytest.raises(RetryLater):
        blobs.read(container, "a.dcm")


class _RiggedStorage(BaseHTTPRequestHandler):
    """Answers every request with the status and headers the test set."""

    status = 503
    headers_to_send: ClassVar[dict[str, str]] = {}

    def _answer(self) -> None:
        self.send_response(self.status)
        for name, value in self.headers_to_send.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def rigged() -> Iterator[tuple[int, type[_RiggedStorage]]]:
    handler = type("Handler", (_RiggedStorage,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (503, {"Retry-After": "7"}, RetryLater, 7.0),
        (429, {"x-ms-retry-after-ms": "2500"}, RetryLater, 2.5),
        (500, {}, RetryLater, None),
        (403, {"x-ms-error-code": "AuthorizationFailure"}, RetryLater, None),
        (400, {"x-ms-error-code": "InvalidUri"}, Quarantine, None),
    ],
)
def test_service_answers_translate_as_documented(
    rigged: tuple[int, type[_RiggedStorage]],
    status: int,
    headers: dict[str, str],
    expected: type[Exception],
    retry_after: float | None,
) -> None:
    port, handler = rigged
    handler.status = status
    handler.headers_to_send = headers
    service = BlobServiceClient.from_connection_string(
        _DEV_ACCOUNT.format(port=port), retry_total=0
    )
    blobs = AzureBlobStore(service)

    with pytest.raises(expected) as caught:
        blobs.read("instances", "trust-a/abc.dcm")

    if isinstance(caught.value, RetryLater):
        assert caught.value.retry_after == retry_after
    blobs.close()
