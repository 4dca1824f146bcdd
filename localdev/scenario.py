"""The demo's scenario, shared by the demo and the end-to-end tests.

Real DICOM from pydicom's packaged test files and the pydicom-data package, uploaded
to the local stack as a partner system would: a zipped multi-patient, multi-series
tree (with its DICOMDIR files), single .dcm files, a research upload, and input that
must be quarantined. Expected outcomes are derived from the files, never hard-coded.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient
from pydicom.data import get_testdata_file
from pydicom.errors import InvalidDicomError

from localdev.tokens import mint_token
from shared_code.config import load_settings
from shared_code.domain.deid import keyed_uid

ROOT = Path(__file__).resolve().parent.parent
STACK_FILE = ROOT / ".local" / "stack.json"
HOST_URL = "http://127.0.0.1:7071/api"
QUEUES = ("instances", "dicom-events", "shares")
DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"

# Single files from pydicom-data (from the installed package, never the network).
PYDICOM_DATA_FILES = (
    "emri_small_jpeg_2k_lossless.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "US1_J2KR.dcm",
    "liver.dcm",
)


@dataclass(frozen=True)
class Upload:
    tenant: str
    name: str
    data: bytes
    expect: str  # "stored" or the reason code it must be quarantined with


@dataclass
class Expected:
    """What the pipeline must produce, from reading the uploads with pydicom."""

    instances: dict[str, set[str]] = field(default_factory=dict)  # tenant -> SOP UIDs
    studies: dict[str, dict[str, dict[str, set[str]]]] = field(default_factory=dict)
    # tenant -> study UID -> series UID -> SOP UIDs

    def copy_study(self, study_uid: str, source: str, target: str, key: bytes) -> str:
        """Expect ``source``'s study in ``target`` too; UIDs keyed when ``key`` is set.

        Returns the study's UID in ``target``.
        """
        series = self.studies[source][study_uid]
        uid = (lambda u: keyed_uid(u, key)) if key else (lambda u: u)
        copied = {uid(s): {uid(sop) for sop in sops} for s, sops in series.items()}
        self.studies.setdefault(target, {})[uid(study_uid)] = copied
        self.instances.setdefault(target, set()).update(*copied.values())
        return uid(study_uid)

    def add(self, tenant: str, data: bytes, key: bytes = b"") -> bool:
        """Expect the instance in ``data`` in ``tenant`` (UIDs keyed by ``key``)."""
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except (InvalidDicomError, ValueError, EOFError, KeyError):
            return False
        if ds.file_meta.get("MediaStorageSOPClassUID") == DIRECTORY_STORAGE:
            return False
        if not all(
            ds.get(k)
            for k in (
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "PatientID",
            )
        ):
            return False
        uid = (lambda u: keyed_uid(u, key)) if key else (lambda u: u)
        sop = uid(ds.SOPInstanceUID)
        self.instances.setdefault(tenant, set()).add(sop)
        study = self.studies.setdefault(tenant, {}).setdefault(
            uid(ds.StudyInstanceUID), {}
        )
        study.setdefault(uid(ds.SeriesInstanceUID), set()).add(sop)
        return True


def testfiles_dir() -> Path:
    return Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


def zip_tree(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return buffer.getvalue()


def zip_members(members: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def build_uploads() -> list[Upload]:
    """The demo's uploads, good and bad, for the three local tenants."""
    files = testfiles_dir()
    ct_small = (files / "CT_small.dcm").read_bytes()
    mr_small = (files / "MR_small.dcm").read_bytes()
    data_store = [
        (name, Path(get_testdata_file(name)).read_bytes())  # type: ignore[arg-type]
        for name in PYDICOM_DATA_FILES
    ]
    return [
        Upload(
            "trust-a", "dicomdirtests.zip", zip_tree(files / "dicomdirtests"), "stored"
        ),
        Upload("trust-a", "CT_small.dcm", ct_small, "stored"),
        Upload("trust-a", "MR_small.dcm", mr_small, "stored"),
        Upload("trust-a", "pydicom-data.zip", zip_members(data_store), "stored"),
        Upload("research", "mr/MR_small.dcm", mr_small, "stored"),
        # Input that must go to quarantine with a reason.
        Upload(
            "trust-a",
            "notes/not-dicom.dcm",
            b"Referral letter, not DICOM\n" * 20,
            "quarantined",
        ),
        Upload("trust-a", "truncated.dcm", ct_small[:1000], "quarantined"),
        Upload(
            "trust-a",
            "hostile.zip",
            zip_members([("../../outside.dcm", ct_small)]),
            "quarantined",
        ),
        Upload("no-such-trust", "CT_small.dcm", ct_small, "quarantined"),
    ]


def expected_from(
    uploads: Iterable[Upload], keys: Mapping[str, bytes] | None = None
) -> Expected:
    """What the archives must hold; ``keys`` gives the de-identifying tenants' keys."""
    keys = keys or {}
    expected = Expected()
    for upload in uploads:
        if upload.expect != "stored":
            continue
        key = keys.get(upload.tenant, b"")
        if upload.name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(upload.data)) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        expected.add(upload.tenant, archive.read(info), key)
        else:
            expected.add(upload.tenant, upload.data, key)
    return expected


class Stack:
    """Clients of the running local stack, from .local/stack.json."""

    def __init__(self, path: Path = STACK_FILE) -> None:
        self.info: dict[str, Any] = json.loads(path.read_text())
        connection = self.info["azurite"]["connection_string"]
        self.blobs = BlobServiceClient.from_connection_string(connection)
        self.queues = QueueServiceClient.from_connection_string(connection)
        self.http = requests.Session()

    def pseudonym_keys(self) -> dict[str, bytes]:
        """The keys of the tenants that de-identify, to predict their UIDs."""
        settings = load_settings(self.info["app_env"])
        return {
            name: tenant.pseudonym_key
            for name, tenant in settings.tenants.items()
            if tenant.policy == "research"
        }

    def tenant(self, name: str) -> dict[str, Any]:
        return dict(self.info["tenants"][name])

    def upload(self, upload: Upload) -> None:
        container = self.blobs.get_container_client("uploads")
        container.upload_blob(
            f"{upload.tenant}/{upload.name}", upload.data, overwrite=True
        )

    def pending(self) -> int:
        """Messages waiting or in flight, plus uploads not yet ingested."""
        count = 0
        for queue in QUEUES:
            props = self.queues.get_queue_client(queue).get_queue_properties()
            count += props.approximate_message_count or 0
        uploads = self.blobs.get_container_client("uploads")
        count += sum(1 for _ in uploads.list_blobs())
        return count

    def dead_letters(self) -> dict[str, int]:
        counts = {}
        for queue in QUEUES:
            client = self.queues.get_queue_client(f"{queue}-deadletter")
            counts[queue] = client.get_queue_properties().approximate_message_count or 0
        return counts

    def qido(self, tenant: str, path: str, **params: str) -> list[dict[str, Any]]:
        info = self.tenant(tenant)
        response = self.http.get(
            f"{info['dicomweb_root']}/{path}",
            params={"limit": "1000", **params},
            auth=(info["username"], info["password"]),
            headers={"Accept": "application/dicom+json"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json() if response.content else []

    def stored_instances(self, tenant: str) -> dict[str, dict[str, set[str]]]:
        """Study → series → SOP Instance UIDs, as the tenant's archive answers QIDO."""
        result: dict[str, dict[str, set[str]]] = {}
        for study in self.qido(tenant, "studies"):
            study_uid = study["0020000D"]["Value"][0]
            for instance in self.qido(tenant, f"studies/{study_uid}/instances"):
                series_uid = instance["0020000E"]["Value"][0]
                sop_uid = instance["00080018"]["Value"][0]
                result.setdefault(study_uid, {}).setdefault(series_uid, set()).add(
                    sop_uid
                )
        return result

    def fhir_search(
        self, tenant: str, resource: str, **params: str
    ) -> list[dict[str, Any]]:
        base = self.tenant(tenant)["fhir_base_url"]
        url: str | None = f"{base}/{resource}"
        query: dict[str, str] | None = {"_count": "100", **params}
        entries: list[dict[str, Any]] = []
        while url:
            response = self.http.get(url, params=query, timeout=30)
            response.raise_for_status()
            bundle = response.json()
            entries += [e["resource"] for e in bundle.get("entry", [])]
            url = next(
                (
                    link["url"]
                    for link in bundle.get("link", [])
                    if link["relation"] == "next"
                ),
                None,
            )
            query = None
        return entries

    def quarantined(self) -> list[dict[str, Any]]:
        container = self.blobs.get_container_client("quarantine")
        reasons = []
        for blob in container.list_blobs():
            if blob.name.endswith(".reason.json"):
                body = container.download_blob(blob.name).readall()
                reasons.append({"blob": blob.name, **json.loads(body)})
        return reasons

    def token(self, tenants: Iterable[str], **kwargs: Any) -> str:
        return mint_token(
            self.info["auth"], subject="demo-operator", tenants=tenants, **kwargs
        )

    def api(
        self, method: str, path: str, token: str, **kwargs: Any
    ) -> requests.Response:
        return self.http.request(
            method,
            f"{HOST_URL}/{path}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kwargs,
        )


def start_host(log_path: Path, workers: int = 4) -> subprocess.Popen[bytes]:
    """The local Functions host as its own process, as Azure runs the app."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdev.host",
            "--stack",
            str(STACK_FILE),
            "--workers",
            str(workers),
            "--state-dir",
            str(ROOT / ".local" / "host"),
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_host(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 1.0,
    progress: Callable[[], str] | None = None,
) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if condition():
            return True
        if progress:
            line = progress()
            if line != last:
                print(f"  … {line}", flush=True)
                last = line
        time.sleep(interval)
    return condition()
