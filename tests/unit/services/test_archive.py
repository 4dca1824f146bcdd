"""The archive use case, with in-memory doubles of our own ports and real DICOM files.

The archive double behaves like Orthanc with ``OverwriteInstances: false`` (keeps the
first copy) or like AHDS (reports the copy as already present); the adapter itself
is tested against a real Orthanc in tests/integration/test_dicomweb.py.
"""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Mapping
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from shared_code.config import Limits, Settings, TenantSettings
from shared_code.domain import dicom_input
from shared_code.errors import (
    AlreadyExists,
    PreconditionFailed,
    Quarantine,
    RetryLater,
)
from shared_code.ports import JsonDict, StoreOutcome
from shared_code.services import archive

KEY = b"k" * 40


# Doubles of our own ports


class MemoryBlobs:
    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}

    def read(self, container: str, name: str) -> bytes:
        try:
            return self.blobs[container, name]
        except KeyError:
            raise Quarantine("blob_missing", name) from None

    def open_read(self, container: str, name: str) -> io.BytesIO:
        return io.BytesIO(self.read(container, name))

    def size(self, container: str, name: str) -> int:
        return len(self.read(container, name))

    def write(
        self,
        container: str,
        name: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = True,
    ) -> None:
        if not overwrite and (container, name) in self.blobs:
            raise AlreadyExists(name)
        self.blobs[container, name] = data

    def exists(self, container: str, name: str) -> bool:
        return (container, name) in self.blobs

    def delete(self, container: str, name: str) -> None:
        self.blobs.pop((container, name), None)

    def list_names(self, container: str, prefix: str = "") -> list[str]:
        return sorted(
            n for c, n in self.blobs if c == container and n.startswith(prefix)
        )


class MemoryState:
    def __init__(self) -> None:
        self.docs: dict[tuple[str, str, str], JsonDict] = {}
        self._version = 0

    def _stamp(self, container: str, doc: JsonDict) -> JsonDict:
        self._version += 1
        stored = {**copy.deepcopy(doc), "_etag": str(self._version)}
        self.docs[container, doc["pk"], doc["id"]] = stored
        return copy.deepcopy(stored)

    def get(self, container: str, pk: str, doc_id: str) -> JsonDict | None:
        doc = self.docs.get((container, pk, doc_id))
        return copy.deepcopy(doc) if doc else None

    def create(self, container: str, doc: JsonDict) -> JsonDict:
        if (container, doc["pk"], doc["id"]) in self.docs:
            raise AlreadyExists(doc["id"])
        return self._stamp(container, doc)

    def upsert(
        self, container: str, doc: JsonDict, *, if_match: str | None = None
    ) -> JsonDict:
        current = self.docs.get((container, doc["pk"], doc["id"]))
        if if_match is not None and (current is None or current["_etag"] != if_match):
            raise PreconditionFailed(doc["id"])
        return self._stamp(container, doc)

    def query(self, container: str, pk: str | None, **equals: Any) -> list[JsonDict]:
        return [
            copy.deepcopy(doc)
            for (c, p, _), doc in self.docs.items()
            if c == container
            and (pk is None or p == pk)
            and all(doc.get(k) == v for k, v in equals.items())
        ]


class MemoryArchive:
    """A DICOM archive that keeps the first copy of a SOP Instance UID.

    ``reports_duplicates`` False behaves like Orthanc (says stored), True like AHDS.
    """

    def __init__(self, *, reports_duplicates: bool = True) -> None:
        self.instances: dict[str, tuple[str, str, bytes]] = {}
        self.reports_duplicates = reports_duplicates
        self.stores = 0
        self.fail_next: Exception | None = None

    @property
    def dicomweb_root(self) -> str:
        return "memory://archive"

    def store_instance(self, part10: bytes) -> StoreOutcome:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.stores += 1
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
        sop = str(ds.SOPInstanceUID)
        if sop in self.instances:
            return StoreOutcome(
                sop, stored=not self.reports_duplicates, already_present=True
            )
        self.instances[sop] = (
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            part10,
        )
        return StoreOutcome(sop, stored=True)

    def _item(self, sop: str) -> JsonDict:
        study, series, _ = self.instances[sop]
        return {
            "0020000D": {"vr": "UI", "Value": [study]},
            "0020000E": {"vr": "UI", "Value": [series]},
            "00080018": {"vr": "UI", "Value": [sop]},
        }

    def search_studies(self, study_instance_uid: str | None = None) -> list[JsonDict]:
        studies = {s for s, _, _ in self.instances.values()}
        return [
            {"0020000D": {"vr": "UI", "Value": [s]}}
            for s in sorted(studies)
            if study_instance_uid in (None, s)
        ]

    def search_series(self, study_instance_uid: str) -> list[JsonDict]:
        return []

    def search_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[JsonDict]:
        return [
            self._item(sop)
            for sop, (study, series, _) in self.instances.items()
            if study == study_instance_uid and series_instance_uid in (None, series)
        ]

    def retrieve_instance(self, study: str, series: str, sop: str) -> bytes:
        if sop not in self.instances:
            raise Quarantine("dicom_not_found", "404")
        return self.instances[sop][2]


def make_settings(**share_to: tuple[str, ...]) -> Settings:
    def tenant(name: str, policy: str) -> TenantSettings:
        return TenantSettings(
            name=name,
            dicomweb_root=f"memory://{name}",
            fhir_base_url=f"memory://{name}/fhir",
            policy=policy,  # type: ignore[arg-type]
            dicom_service_host=name,
            dicomweb_auth="none",
            pseudonym_key=KEY if policy == "research" else b"",
            share_to=share_to.get(name.replace("-", "_"), ()),
        )

    return Settings(
        storage_connection="UseDevelopmentStorage=true",
        storage_account_url="",
        bus_kind="storage-queue",
        servicebus_namespace="",
        state_kind="sqlite",
        sqlite_path=":memory:",
        cosmos_endpoint="",
        cosmos_database="",
        auth_mode="local",
        auth_issuer="",
        auth_audience="exchange",
        auth_jwks_url="",
        auth_local_public_key_path="unused",
        managed_identity_client_id="",
        tenants={
            "trust-a": tenant("trust-a", "clinical"),
            "trust-b": tenant("trust-b", "clinical"),
            "research": tenant("research", "research"),
        },
    )


def dicom_bytes(name: str = "CT_small.dcm") -> bytes:
    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as handle:
        return handle.read()


def pipeline_bytes(data: bytes, tenant: str) -> bytes:
    """What the archive use case sends for ``data`` (the preamble is rewritten)."""
    parsed = dicom_input.parse_instance("x.dcm", data, Limits())
    return archive.prepare_for_tenant(parsed, make_settings().tenant(tenant)).part10


def stage(blobs: MemoryBlobs, tenant: str, data: bytes) -> dict[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    blob = f"{tenant}/{sha}.dcm"
    blobs.write("instances", blob, data)
    return {"tenant": tenant, "upload": "u1", "blob": blob, "sha256": sha}


# Tests


@pytest.fixture
def world() -> dict[str, Any]:
    archives = {name: MemoryArchive() for name in ("trust-a", "trust-b", "research")}
    return {
        "settings": make_settings(),
        "blobs": MemoryBlobs(),
        "state": MemoryState(),
        "archives": archives,
    }


def run(world: dict[str, Any], message: Mapping[str, Any]) -> archive.ArchiveOutcome:
    return archive.archive_instance(
        message,
        settings=world["settings"],
        blobs=world["blobs"],
        archive_for=world["archives"].__getitem__,
        state=world["state"],
    )


def test_clinical_instance_is_stored_unchanged_and_recorded(world):
    data = dicom_bytes()
    message = stage(world["blobs"], "trust-a", data)

    outcome = run(world, message)

    original = pydicom.dcmread(io.BytesIO(data))
    assert outcome.outcome == "stored"
    assert outcome.sop_instance_uid == original.SOPInstanceUID
    stored = world["archives"]["trust-a"].instances[original.SOPInstanceUID][2]
    assert pydicom.dcmread(io.BytesIO(stored)).PatientName == original.PatientName
    record = world["state"].get("instances", "trust-a", original.SOPInstanceUID)
    assert record["sha256"] == hashlib.sha256(stored).hexdigest()
    assert record["study_uid"] == original.StudyInstanceUID
    assert not world["blobs"].exists("instances", message["blob"])
    steps = [
        (r["step"], r["outcome"]) for r in world["state"].query("audit", "trust-a")
    ]
    assert steps == [("archive", "stored")]


def test_redelivery_is_idempotent_before_and_after_the_blob_is_deleted(world):
    data = dicom_bytes()
    message = stage(world["blobs"], "trust-a", data)
    run(world, message)

    after_delete = run(world, message)
    stage(world["blobs"], "trust-a", data)
    blob_back = run(world, message)

    assert after_delete.outcome == "already_stored"
    assert blob_back.outcome == "already_stored"
    assert world["archives"]["trust-a"].stores == 1


@pytest.mark.parametrize("reports_duplicates", [True, False])
def test_copy_already_in_archive_without_state_record(world, reports_duplicates):
    archive_double = MemoryArchive(reports_duplicates=reports_duplicates)
    world["archives"]["trust-a"] = archive_double
    data = dicom_bytes()
    # An earlier run stored the pipeline's bytes, then died before its state record.
    archive_double.store_instance(pipeline_bytes(data, "trust-a"))

    outcome = run(world, stage(world["blobs"], "trust-a", data))

    # The Orthanc-like double says "stored" for a kept first copy: the adapter's
    # QIDO pre-check is what turns that into already_present (integration test).
    assert outcome.outcome == ("already_stored" if reports_duplicates else "stored")
    sop = outcome.sop_instance_uid
    assert world["state"].get("instances", "trust-a", sop) is not None


def test_different_object_under_a_known_uid_is_quarantined_as_conflict(world):
    data = dicom_bytes()
    run(world, stage(world["blobs"], "trust-a", data))
    changed = pydicom.dcmread(io.BytesIO(data))
    changed.InstanceNumber = 99
    buffer = io.BytesIO()
    changed.save_as(buffer)
    message = stage(world["blobs"], "trust-a", buffer.getvalue())

    outcome = run(world, message)

    assert outcome.outcome == "quarantined"
    assert outcome.reason == "sop_instance_conflict"
    assert world["blobs"].exists(
        "quarantine", f"trust-a/archive/{message['sha256']}.dcm"
    )
    assert not world["blobs"].exists("instances", message["blob"])
    assert world["archives"]["trust-a"].stores == 1


def test_conflict_found_in_archive_when_state_has_no_record(world):
    data = dicom_bytes()
    world["archives"]["trust-a"].store_instance(data)
    changed = pydicom.dcmread(io.BytesIO(data))
    changed.InstanceNumber = 99
    buffer = io.BytesIO()
    changed.save_as(buffer)

    outcome = run(world, stage(world["blobs"], "trust-a", buffer.getvalue()))

    assert outcome.reason == "sop_instance_conflict"


def test_research_tenant_gets_pseudonyms(world):
    data = dicom_bytes()
    original = pydicom.dcmread(io.BytesIO(data))

    outcome = run(world, stage(world["blobs"], "research", data))

    assert outcome.outcome == "stored"
    assert outcome.sop_instance_uid != original.SOPInstanceUID
    stored = world["archives"]["research"].instances[outcome.sop_instance_uid][2]
    assert pydicom.dcmread(io.BytesIO(stored)).PatientName != original.PatientName
    [record] = world["state"].query("audit", "research")
    report = record["deid_report"]
    assert report["edition"] == "2024b"
    assert any(path == "(0010,0010)" for path, _, _ in report["entries"])
    assert str(original.PatientName) not in str(record)


def test_leak_quarantines_and_never_reaches_the_archive(world, monkeypatch):
    def leaky(dataset, key, policy=None):
        return None  # leaves every identifier in place

    monkeypatch.setattr(archive.deid, "deidentify", leaky)
    message = stage(world["blobs"], "research", dicom_bytes())

    outcome = run(world, message)

    assert outcome.outcome == "quarantined"
    assert outcome.reason == "deid_leak"
    assert world["archives"]["research"].instances == {}
    reasons = [r["detail"] for r in world["state"].query("audit", "research")]
    assert reasons == ["deid_leak"]


def test_not_dicom_is_quarantined(world):
    message = stage(world["blobs"], "trust-a", b"not a dicom file at all" * 10)

    outcome = run(world, message)

    assert outcome.outcome == "quarantined"
    assert world["archives"]["trust-a"].stores == 0


def test_tampered_staged_blob_is_quarantined(world):
    message = stage(world["blobs"], "trust-a", dicom_bytes())
    world["blobs"].write("instances", message["blob"], dicom_bytes("MR_small.dcm"))

    assert run(world, message).reason == "staged_blob_mismatch"


def test_archive_refusal_is_quarantined(world):
    world["archives"]["trust-a"].store_instance = lambda part10: StoreOutcome(
        "x", stored=False, failure_reason=43264
    )

    outcome = run(world, stage(world["blobs"], "trust-a", dicom_bytes()))

    assert outcome.reason == "dicom_store_failed"


def test_retry_later_propagates_and_keeps_the_staged_blob(world):
    world["archives"]["trust-a"].fail_next = RetryLater("503", retry_after=5)
    message = stage(world["blobs"], "trust-a", dicom_bytes())

    with pytest.raises(RetryLater):
        run(world, message)

    assert world["blobs"].exists("instances", message["blob"])
    records = world["state"].query("instances", "trust-a")
    assert [r["state"] for r in records] == ["storing"]  # claimed, not yet stored
    assert run(world, message).outcome == "stored"


@pytest.mark.parametrize(
    "message",
    [
        ["trust-a", "trust-a/x.dcm"],
        {"tenant": "trust-a", "blob": "trust-a/x.dcm"},
        {"tenant": "trust-a", "blob": "trust-a/x.dcm", "sha256": "not-hex"},
        {"tenant": "", "blob": "x.dcm", "sha256": "0" * 64},
        {"tenant": "trust-a", "blob": "trust-b/x.dcm", "sha256": "0" * 64},
        {"tenant": 7, "blob": "trust-a/x.dcm", "sha256": "0" * 64},
    ],
)
def test_a_malformed_message_is_refused_before_anything_is_read(world, message):
    with pytest.raises(Quarantine) as raised:
        run(world, message)

    assert raised.value.reason == "malformed_message"
    assert world["state"].query("audit", None) == []


def test_of_two_objects_racing_under_one_new_uid_one_is_stored_one_conflicts(world):
    data = dicom_bytes()
    other = pydicom.dcmread(io.BytesIO(data))
    other.SeriesDescription = "a different object, same SOP Instance UID"
    buffer = io.BytesIO()
    other.save_as(buffer)
    first = stage(world["blobs"], "trust-a", data)
    second = stage(world["blobs"], "trust-a", buffer.getvalue())
    archive_double = world["archives"]["trust-a"]
    original_store = archive_double.store_instance
    during_first_stow: list[archive.ArchiveOutcome] = []

    def store_while_the_other_arrives(part10: bytes) -> StoreOutcome:
        if not during_first_stow:  # the second message runs while the first STOWs
            during_first_stow.append(run(world, second))
        return original_store(part10)

    archive_double.store_instance = store_while_the_other_arrives

    outcome = run(world, first)

    assert outcome.outcome == "stored"
    assert [o.reason for o in during_first_stow] == ["sop_instance_conflict"]
    assert archive_double.stores == 1
