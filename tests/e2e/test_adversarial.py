"""End to end, adversarial: broken, hostile and racing input against the real pipeline.

Given the local host running function_app.py on the local stack, when uploads, bus
messages and HTTP requests arrive that are empty, malformed, hostile, conflicting or
racing each other, then each one is refused with a reason (quarantine, dead letter or
an HTTP status), nothing is lost, stored twice or leaked, and the host keeps running.

Inputs are built here from pydicom's CT_small with fresh UIDs and the synthetic
patient DOE^JANE / TEST0001 / 19700101, so the last test can look for those values
wherever the pipeline writes text. Everything lives under ``uploads/trust-a/<run>/``
and message ids that start with ``<run>``, so one run never reads another's results.
A test marked ``xfail(strict=True)`` records a finding: the product breaks a promise.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import io
import itertools
import json
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pydicom
import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydicom.data import get_testdata_file
from pydicom.uid import UID, generate_uid

from localdev.scenario import (
    ROOT,
    STACK_FILE,
    Stack,
    stop_host,
    wait_until,
    zip_members,
)
from tests.e2e.conftest import HOST_LOG, HostProcess

pytestmark = pytest.mark.e2e

TENANT = "trust-a"
RUN = f"adv-{uuid.uuid4().hex[:8]}"
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "DOE^JANE", "TEST0001", "19700101"
PHI = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE)
SETTLE_TIMEOUT = 240
# A message that fails without a reason the app recognises is redelivered with
# back-off before the host dead-letters it; how long that takes is the host's choice.
MESSAGE_TIMEOUT = 150
QUIET_SECONDS = 6
RACING_PAIRS = 16
SECOND_HOST_LOG = ROOT / ".local" / "logs" / "host-e2e-adversarial.log"
BUS_QUEUES = ("instances", "dicom-events", "shares")

STRAY = f"{RUN}-stray.dcm"  # uploads/<name>: no tenant folder
_CT_SMALL = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
_TEMPLATE = pydicom.dcmread(io.BytesIO(_CT_SMALL))


# Inputs ---------------------------------------------------------------------------


def _dataset(study_uid: str, series_uid: str, sop_uid: str, number: int) -> Any:
    """CT_small as the synthetic patient, under the UIDs given."""
    ds = copy.deepcopy(_TEMPLATE)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = number
    return ds


def _part10(ds: Any) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Study:
    """A synthetic study: fresh UIDs, DOE^JANE, one series."""

    uid: str = field(default_factory=generate_uid)
    series: str = field(default_factory=generate_uid)
    sops: list[str] = field(default_factory=list)

    def instance(self, sop_uid: str | None = None, description: str = "") -> bytes:
        sop = sop_uid or generate_uid()
        ds = _dataset(self.uid, self.series, sop, len(self.sops) + 1)
        if description:
            ds.SeriesDescription = description
        if sop not in self.sops:
            self.sops.append(sop)
        return _part10(ds)

    def zip(self, count: int) -> bytes:
        return zip_members((f"im{n:04}.dcm", self.instance()) for n in range(count))


def _zip_bomb() -> bytes:
    # 64 MiB of zeros deflate to ~64 KiB: far past the 200x ratio and 16 MiB floor.
    return zip_members([("bomb.dcm", bytes(64 * 1024 * 1024))])


def _zip_with_bad_crc(first: bytes) -> bytes:
    """A good member, then a member whose stored CRC-32 does not match its data."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.dcm", first)
        archive.writestr("b.dcm", first)
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        second = archive.infolist()[1].header_offset
    central = data.rfind(b"PK\x01\x02")  # the last central directory entry
    # CRC-32 sits at offset 14 of a local header and 16 of a central entry.
    data[second + 14 : second + 18] = struct.pack("<I", 0xDEADBEEF)
    data[central + 16 : central + 20] = struct.pack("<I", 0xDEADBEEF)
    return bytes(data)


def _without_patient_id() -> bytes:
    ds = _dataset(generate_uid(), generate_uid(), generate_uid(), 1)
    del ds.PatientID
    return _part10(ds)


def _cut_inside_patient_name() -> bytes:
    data = Study().instance()
    return data[: data.index(PATIENT_NAME.encode()) + 3]


@dataclass(frozen=True)
class Refused:
    """An upload that must end in quarantine, whole or in part, with ``reasons``."""

    name: str
    data: bytes
    reasons: tuple[str, ...]
    never_stored: tuple[str, ...] = ()  # SOP Instance UIDs that must not be archived


@dataclass
class Attack:
    """What was planted, and what it must become."""

    started: float
    host_log_offset: int
    refused: list[Refused] = field(default_factory=list)
    stored: dict[str, list[str]] = field(default_factory=dict)  # name -> SOP UIDs
    studies: dict[str, Study] = field(default_factory=dict)
    messages: dict[str, tuple[str, str]] = field(default_factory=dict)  # id->(q, text)
    staged: dict[str, str] = field(default_factory=dict)  # name -> instances/ source


def _staged_source(data: bytes) -> str:
    """Where ingest stages these bytes: the source of an archive-step quarantine."""
    return f"instances/{TENANT}/{hashlib.sha256(data).hexdigest()}.dcm"


def _path(name: str) -> str:
    return f"{RUN}/{name}"


def _source(name: str) -> str:
    return f"uploads/{TENANT}/{_path(name)}"


# Bus messages ------------------------------------------------------------------------


def _envelope(message_id: str, body: Any) -> str:
    return json.dumps(
        {
            "message_id": message_id,
            "body": body,
            "enqueued_time": datetime.now(UTC).isoformat(),
        }
    )


def _bad_messages(stack: Stack) -> dict[str, tuple[str, str]]:
    """message id -> (queue, text) of hostile messages on each trigger queue."""
    mismatched = f"{TENANT}/{hashlib.sha256(RUN.encode()).hexdigest()}.dcm"
    stack.blobs.get_container_client("instances").upload_blob(
        mismatched, b"these are not the staged bytes", overwrite=True
    )
    absent = hashlib.sha256(f"{RUN}-absent".encode()).hexdigest()
    event = {
        "id": f"{RUN}-event",
        "eventType": "Microsoft.HealthcareApis.DicomImageCreated",
        "subject": "x",
        "eventTime": datetime.now(UTC).isoformat(),
        "dataVersion": "1",
        "data": {
            "partitionName": "Microsoft.Default",
            "imageStudyInstanceUid": "1.2.3",
            "imageSeriesInstanceUid": "1.2.3.4",
            "imageSopInstanceUid": "1.2.3.4.5",
            "serviceHostName": "no-such-dicom-service.example",
            "sequenceNumber": 1,
        },
    }
    bodies: dict[str, tuple[str, Any]] = {
        "instances-body-string": ("instances", "not an object"),
        "instances-body-array": ("instances", [{"tenant": TENANT}]),
        "instances-body-empty": ("instances", {}),
        "instances-missing-blob": ("instances", {"tenant": TENANT, "sha256": "0"}),
        "instances-unknown-tenant": (
            "instances",
            {
                "tenant": "no-such-trust",
                "upload": "x",
                "blob": f"no-such-trust/{absent}.dcm",
                "sha256": absent,
            },
        ),
        "instances-blob-absent": (
            "instances",
            {
                "tenant": TENANT,
                "upload": "x",
                "blob": f"{TENANT}/{absent}.dcm",
                "sha256": absent,
            },
        ),
        "instances-blob-mismatch": (
            "instances",
            {
                "tenant": TENANT,
                "upload": "x",
                "blob": mismatched,
                "sha256": hashlib.sha256(b"other").hexdigest(),
            },
        ),
        "events-body-empty": ("dicom-events", {}),
        "events-unknown-service": ("dicom-events", event),
        "shares-no-such-share": ("shares", {"share_id": f"{RUN}-no-such-share"}),
        "shares-body-array": ("shares", ["share_id"]),
    }
    messages = {
        f"{RUN}-{key}": (queue, _envelope(f"{RUN}-{key}", body))
        for key, (queue, body) in bodies.items()
    }
    # Not a local bus envelope at all: the host itself must set these aside.
    for queue in BUS_QUEUES:
        messages[f"{RUN}-{queue}-not-json"] = (queue, f"{RUN} this is not JSON {{")
        messages[f"{RUN}-{queue}-array"] = (queue, json.dumps([RUN, "array"]))
    return messages


def _dead_letters(stack: Stack) -> list[dict[str, Any]]:
    """This run's dead letters on every queue (peeked, left in place)."""
    found = []
    for queue in BUS_QUEUES:
        client = stack.queues.get_queue_client(f"{queue}-deadletter")
        for message in client.peek_messages(max_messages=32):
            if RUN in (message.content or ""):
                found.append({"queue": queue, **json.loads(message.content)})
    return found


def _remove_dead_letters(stack: Stack) -> None:
    """Take this run's dead letters off the queues; put others' back at once."""
    for queue in BUS_QUEUES:
        client = stack.queues.get_queue_client(f"{queue}-deadletter")
        pages = client.receive_messages(
            messages_per_page=32, visibility_timeout=30
        ).by_page()
        for message in next(pages, []):
            if RUN in (message.content or ""):
                client.delete_message(message)
            else:
                client.update_message(message, visibility_timeout=0)


# State and outputs ----------------------------------------------------------------


def _documents(stack: Stack, container: str, since: float = 0) -> list[dict[str, Any]]:
    path = stack.info["app_env"]["EXCHANGE_SQLITE_PATH"]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute(
            "SELECT body FROM documents WHERE container = ? AND ts >= ?",
            (container, int(since)),
        ).fetchall()
    return [json.loads(body) for (body,) in rows]


def _audit(stack: Stack, **equals: Any) -> list[dict[str, Any]]:
    return [
        doc
        for doc in _documents(stack, "audit")
        if all(doc.get(k) == v for k, v in equals.items())
    ]


def _instances(stack: Stack, study_uid: str) -> list[str]:
    """SOP Instance UIDs the archive answers for a study, duplicates kept."""
    for attempt in range(3):
        try:
            found = stack.qido(TENANT, f"studies/{study_uid}/instances")
        except requests.HTTPError:
            return []
        except requests.ConnectionError:
            # Orthanc drops idle keep-alive connections under load; ask again.
            if attempt == 2:
                raise
            continue
        return [item["00080018"]["Value"][0] for item in found]
    return []


def _archived(stack: Stack, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
    info = stack.tenant(TENANT)
    response = requests.get(  # a fresh connection: see _instances
        f"{info['dicomweb_root']}/studies/{study_uid}/series/{series_uid}"
        f"/instances/{sop_uid}/metadata",
        auth=(info["username"], info["password"]),
        headers={"Accept": "application/dicom+json"},
        timeout=30,
    )
    response.raise_for_status()
    return response.content


def _uploads_left(stack: Stack) -> list[str]:
    """This run's uploads not yet taken out of the inbox."""
    container = stack.blobs.get_container_client("uploads")
    return [b.name for b in container.list_blobs(name_starts_with=f"{TENANT}/{RUN}")]


def _settle(stack: Stack, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until this run's uploads are ingested and the ``instances`` queue is
    empty for QUIET_SECONDS; say what is stuck.

    FHIR sync (``dicom-events``) and share transfers are not waited for here: the
    tests that need them wait for their own outcome.
    """
    instances = stack.queues.get_queue_client("instances")
    quiet_since: list[float] = []

    def quiet() -> bool:
        waiting = instances.get_queue_properties().approximate_message_count
        if waiting or _uploads_left(stack):
            quiet_since.clear()
            return False
        quiet_since[:] = quiet_since or [time.monotonic()]
        return time.monotonic() - quiet_since[0] >= QUIET_SECONDS

    if not wait_until(quiet, timeout=timeout, interval=1):
        waiting = instances.get_queue_properties().approximate_message_count
        pytest.fail(
            f"the pipeline did not settle: uploads left {_uploads_left(stack)}, "
            f"{waiting} messages on instances"
        )


def _reasons_for(reasons: list[dict[str, Any]], source: str) -> list[str]:
    """Reasons of the upload ``source`` itself or one of its members (``source#m``)."""
    return [
        r["reason"]
        for r in reasons
        if r["source"] == source or r["source"].startswith(source + "#")
    ]


# Fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attack(local_stack: Stack, host: HostProcess) -> Iterator[Attack]:
    """Plant every hostile upload and message at once; the tests then look."""
    planted = Attack(
        started=time.time() - 1,
        host_log_offset=HOST_LOG.stat().st_size if HOST_LOG.exists() else 0,
    )
    mixed = Study()
    planted.refused = [
        Refused("empty.dcm", b"", ("unsupported_upload",)),
        Refused("empty.zip", b"", ("corrupt_zip",)),
        Refused(
            "zip-of-zips.zip",
            zip_members([("inner.zip", zip_members([("a.dcm", mixed.instance())]))]),
            ("not_supported.nested_zip",),
        ),
        Refused("bomb.zip", _zip_bomb(), ("zip_bomb",)),
        Refused(
            "truncated-in-name.dcm", _cut_inside_patient_name(), ("malformed_dicom",)
        ),
        Refused("no-patient-id.dcm", _without_patient_id(), ("missing_attribute",)),
        Refused(
            "late-nested.zip",
            zip_members(
                [
                    ("a.dcm", mixed.instance()),
                    ("b.dcm", zip_members([("c.dcm", _CT_SMALL)])),
                ]
            ),
            ("not_supported.nested_zip",),
            never_stored=(mixed.sops[-1],),
        ),
        Refused(
            "late-bad-crc.zip",
            _zip_with_bad_crc(mixed.instance()),
            ("corrupt_zip",),
            never_stored=(mixed.sops[-1],),
        ),
    ]
    planted.studies["mixed"] = mixed

    many = Study()
    shared = Study()
    odd_names = Study()
    same = Study()
    planted.studies.update(many=many, shared=shared, odd=odd_names, same=same)
    uploads: dict[str, bytes] = {r.name: r.data for r in planted.refused}
    uploads["many/300-members.zip"] = many.zip(300)
    uploads["share/study.zip"] = shared.zip(12)
    for name in (
        "names/with space ü 日本語 #1.dcm",
        "names/..%2F..%2Fencoded.dcm",
        "names/.hidden",
        "names/trailing-dot.",
    ):
        uploads[name] = odd_names.instance()
        planted.stored[name] = [odd_names.sops[-1]]
    twice = same.instance()
    for name in ("twice/first.dcm", "twice/second name.dcm", "twice/third.zip"):
        uploads[name] = (
            zip_members([("x.dcm", twice)]) if name.endswith("zip") else twice
        )
        planted.stored[name] = [same.sops[0]]
    planted.stored["many/300-members.zip"] = list(many.sops)
    planted.stored["share/study.zip"] = list(shared.sops)

    # A SOP Instance UID stored, then sent again with other content; and two
    # different objects under one new SOP Instance UID sent at the same moment.
    conflict = Study()
    racing = Study()
    planted.studies.update(conflict=conflict, racing=racing)
    uploads["conflict/original.dcm"] = conflict.instance(description="ORIGINAL")
    # Both objects of a pair in one zip: their messages are queued back to back, so
    # two archive workers take them at the same moment.
    pairs: list[tuple[str, bytes]] = []
    for pair in range(RACING_PAIRS):
        sop = generate_uid()
        for label in ("one", "two"):
            data = racing.instance(sop, description=label.upper())
            pairs.append((f"{pair}-{label}.dcm", data))
            planted.staged[f"race/{pair}-{label}.dcm"] = _staged_source(data)
    uploads["0-race/pairs.zip"] = zip_members(pairs)  # listed, so ingested, first

    planted.messages = _bad_messages(local_stack)
    inbox = local_stack.blobs.get_container_client("uploads")
    for name, data in uploads.items():
        inbox.upload_blob(f"{TENANT}/{_path(name)}", data, overwrite=True)
    inbox.upload_blob(STRAY, Study().instance(), overwrite=True)
    for queue, text in planted.messages.values():
        local_stack.queues.get_queue_client(queue).send_message(text)

    assert wait_until(
        lambda: bool(_instances(local_stack, conflict.uid)), timeout=120, interval=0.5
    ), "the original of the conflict was not archived"
    impostor = conflict.instance(conflict.sops[0], description="IMPOSTOR")
    planted.staged["conflict/impostor.dcm"] = _staged_source(impostor)
    local_stack.blobs.get_container_client("uploads").upload_blob(
        f"{TENANT}/{_path('conflict/impostor.dcm')}", impostor, overwrite=True
    )
    yield planted
    # Messages still being redelivered would be dead-lettered after the clean-up.
    shares = local_stack.queues.get_queue_client("shares")
    wait_until(
        lambda: not shares.get_queue_properties().approximate_message_count,
        timeout=MESSAGE_TIMEOUT,
        interval=1,
    )
    _remove_dead_letters(local_stack)
    # Names the pipeline never takes out of the inbox (see their tests).
    with contextlib.suppress(ResourceNotFoundError):
        inbox.delete_blob(STRAY)


@pytest.fixture(scope="module")
def settled(local_stack: Stack, attack: Attack) -> Attack:
    _settle(local_stack)
    return attack


@pytest.fixture(scope="module")
def shared_study(local_stack: Stack, attack: Attack) -> Study:
    study = attack.studies["shared"]
    assert wait_until(
        lambda: len(_instances(local_stack, study.uid)) == len(study.sops),
        timeout=180,
        interval=1,
    ), "the study to share was not archived"
    return study


# HTTP -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(stack: Stack, **overrides: Any) -> dict[str, Any]:
    token = stack.token([TENANT])
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    claims.update(overrides)
    return claims


def _unsigned(claims: dict[str, Any], header: dict[str, Any], key: bytes) -> str:
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    )
    signature = (
        hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    )
    return f"{signing_input}.{_b64(signature)}"


def _bad_authorizations(stack: Stack) -> dict[str, str | None]:
    """Authorization header values that must all be answered 401."""
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = Path(stack.info["auth"]["public_key_path"]).read_bytes()
    claims = _claims(stack)
    valid = stack.token(["trust-b"])
    head, _, rest = valid.partition(".")
    tampered_claims = _claims(stack, roles=["Tenant.trust-a", "Studies.Read"])
    tampered = ".".join(
        (head, _b64(json.dumps(tampered_claims).encode()), rest.partition(".")[2])
    )
    no_exp = {k: v for k, v in claims.items() if k != "exp"}
    return {
        "none": None,
        "empty bearer": "Bearer ",
        "basic": "Basic " + base64.b64encode(b"exchange:exchange").decode(),
        "garbage": "Bearer not.a.token",
        "expired": f"Bearer {stack.token([TENANT], lifetime_seconds=-3600)}",
        "not yet valid": "Bearer " + stack.token([TENANT], nbf=int(time.time()) + 3600),
        "forged key": "Bearer " + jwt.encode(claims, other_pem, algorithm="RS256"),
        "alg none": "Bearer " + _unsigned(claims, {"alg": "none", "typ": "JWT"}, b""),
        "hs256 with the public key": "Bearer "
        + _unsigned(claims, {"alg": "HS256", "typ": "JWT"}, public_pem),
        "wrong audience": "Bearer " + stack.token([TENANT], aud="api://someone-else"),
        "wrong issuer": "Bearer " + stack.token([TENANT], iss="https://evil.example/"),
        "no expiry": "Bearer " + jwt.encode(no_exp, _private_key(stack), "RS256"),
        "tampered claims": f"Bearer {tampered}",
    }


def _private_key(stack: Stack) -> bytes:
    return Path(stack.info["auth"]["private_key_path"]).read_bytes()


def _call(
    stack: Stack, method: str, path: str, authorization: str | None, **kw: Any
) -> requests.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return stack.http.request(
        method,
        f"http://127.0.0.1:7071/api/{path}",
        headers=headers,
        timeout=30,
        **kw,
    )


def test_given_missing_expired_or_forged_tokens_when_calling_the_api_then_401(
    local_stack: Stack, shared_study: Study
) -> None:
    answers = {}
    for label, authorization in _bad_authorizations(local_stack).items():
        read = _call(local_stack, "GET", f"studies/{shared_study.uid}", authorization)
        share = _call(
            local_stack,
            "POST",
            "shares",
            authorization,
            json={
                "study_uid": shared_study.uid,
                "from_tenant": TENANT,
                "to_tenant": "trust-b",
            },
        )
        answers[label] = (read.status_code, share.status_code)
        assert read.headers.get("WWW-Authenticate", "").startswith("Bearer"), label

    assert answers == {label: (401, 401) for label in answers}


def test_given_a_token_without_the_role_or_tenant_when_calling_then_403(
    local_stack: Stack, shared_study: Study
) -> None:
    no_read = local_stack.token([TENANT], roles=())
    unknown_tenant = local_stack.token(["no-such-trust"])

    assert (
        local_stack.api("GET", f"studies/{shared_study.uid}", no_read).status_code
        == 403
    )
    assert (
        local_stack.api(
            "GET", f"studies/{shared_study.uid}", unknown_tenant
        ).status_code
        == 403
    )


def test_given_another_tenants_study_when_read_then_404_like_a_missing_one(
    local_stack: Stack, shared_study: Study
) -> None:
    missing = generate_uid()
    for tenant in ("trust-b", "research"):
        token = local_stack.token([tenant])
        theirs = local_stack.api("GET", f"studies/{shared_study.uid}", token)
        nobodys = local_stack.api("GET", f"studies/{missing}", token)
        named = local_stack.api(
            "GET", f"studies/{shared_study.uid}?tenant={TENANT}", token
        )
        named_missing = local_stack.api(
            "GET", f"studies/{missing}?tenant={TENANT}", token
        )

        assert (theirs.status_code, nobodys.status_code) == (404, 404)
        assert theirs.json() == nobodys.json()
        assert named.status_code == named_missing.status_code == 403
        assert named.json() == named_missing.json()


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'"a string"', b"", b"\xff\xfe"],
    ids=["not-json", "array", "string", "empty", "not-utf8"],
)
def test_given_a_body_that_is_not_a_json_object_when_sharing_then_400(
    local_stack: Stack, body: bytes
) -> None:
    authorization = f"Bearer {local_stack.token([TENANT])}"

    answer = _call(local_stack, "POST", "shares", authorization, data=body)

    assert answer.status_code == 400, answer.text


def test_given_a_study_that_does_not_exist_when_sharing_then_404(
    local_stack: Stack, attack: Attack
) -> None:
    token = local_stack.token([TENANT])

    answer = local_stack.api(
        "POST",
        "shares",
        token,
        json={
            "study_uid": generate_uid(),
            "from_tenant": TENANT,
            "to_tenant": "trust-b",
        },
    )

    assert answer.status_code == 404, answer.text


def test_given_no_study_uid_when_sharing_then_400_and_nothing_queued(
    local_stack: Stack, attack: Attack
) -> None:
    token = local_stack.token([TENANT])

    missing = local_stack.api(
        "POST", "shares", token, json={"from_tenant": TENANT, "to_tenant": "trust-b"}
    )
    wildcard = local_stack.api(
        "POST",
        "shares",
        token,
        json={"study_uid": "*", "from_tenant": TENANT, "to_tenant": "trust-b"},
    )

    assert missing.status_code == 400, missing.text
    assert wildcard.status_code == 400, wildcard.text


def test_given_no_routing_rule_when_sharing_then_403(
    local_stack: Stack, shared_study: Study
) -> None:
    trust_b = local_stack.token(["trust-b"])
    trust_a = local_stack.token([TENANT])

    to_research = local_stack.api(
        "POST",
        "shares",
        trust_b,
        json={
            "study_uid": shared_study.uid,
            "from_tenant": "trust-b",
            "to_tenant": "research",
        },
    )
    to_itself = local_stack.api(
        "POST",
        "shares",
        trust_a,
        json={
            "study_uid": shared_study.uid,
            "from_tenant": TENANT,
            "to_tenant": TENANT,
        },
    )

    assert to_research.status_code == 403, to_research.text
    assert to_itself.status_code == 403, to_itself.text


def _share(stack: Stack, study: Study) -> requests.Response:
    return stack.api(
        "POST",
        "shares",
        stack.token([TENANT]),
        json={"study_uid": study.uid, "from_tenant": TENANT, "to_tenant": "trust-b"},
    )


def _wait_share_done(stack: Stack, share_id: str) -> dict[str, Any]:
    token = stack.token([TENANT])

    def done() -> bool:
        return stack.api("GET", f"shares/{share_id}", token).json()["status"] in (
            "COMPLETE",
            "FAILED",
        )

    assert wait_until(done, timeout=180, interval=0.5)
    share: dict[str, Any] = stack.api("GET", f"shares/{share_id}", token).json()
    return share


def test_given_the_same_share_posted_again_then_the_same_share_comes_back(
    local_stack: Stack, shared_study: Study
) -> None:
    first = _share(local_stack, shared_study)
    again = _share(local_stack, shared_study)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    share = _wait_share_done(local_stack, first.json()["id"])
    assert share["status"] == "COMPLETE"
    assert share["copied"] == len(shared_study.sops)


def test_given_the_same_share_posted_concurrently_then_never_two_open_at_once(
    local_stack: Stack, shared_study: Study
) -> None:
    callers = 8
    start = threading.Barrier(callers)
    token = local_stack.token([TENANT])
    body = {
        "study_uid": shared_study.uid,
        "from_tenant": TENANT,
        "to_tenant": "trust-b",
    }

    def post(_: int) -> requests.Response:
        with requests.Session() as session:
            start.wait()
            for attempt in range(3):
                try:
                    return session.post(
                        "http://127.0.0.1:7071/api/shares",
                        json=body,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=60,
                    )
                except requests.ConnectionError:
                    # The local host's listener resets connections under load; a
                    # client resends, which is what the share must survive anyway.
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    with ThreadPoolExecutor(callers) as pool:
        answers = list(pool.map(post, range(callers)))

    assert {a.status_code for a in answers} == {202}
    ids = {a.json()["id"] for a in answers}
    shares = sorted(
        (_wait_share_done(local_stack, share_id) for share_id in ids),
        key=lambda share: str(share["created_at"]),
    )
    # A request after the share finished may start a new one (a re-send); two
    # shares of one study and route must never be open at the same time.
    for earlier, later in itertools.pairwise(shares):
        assert later["created_at"] >= earlier["updated_at"], (earlier, later)


def test_given_a_share_of_another_tenant_when_read_then_404_like_a_missing_one(
    local_stack: Stack, shared_study: Study
) -> None:
    created = _share(local_stack, shared_study)
    share_id = created.json()["id"]
    research = local_stack.token(["research"])
    destination = local_stack.token(["trust-b"])

    theirs = local_stack.api("GET", f"shares/{share_id}", research)
    nobodys = local_stack.api("GET", f"shares/{uuid.uuid4()}", research)
    traversal = local_stack.api("GET", "shares/..%2F..%2Fstudies", research)

    assert (theirs.status_code, nobodys.status_code) == (404, 404)
    assert theirs.json() == nobodys.json()
    assert traversal.status_code == 404
    assert local_stack.api("GET", f"shares/{share_id}", destination).status_code == 200
    _wait_share_done(local_stack, share_id)


# Uploads ----------------------------------------------------------------------------


def test_given_an_upload_overwritten_mid_ingest_then_the_new_content_is_not_lost(
    local_stack: Stack, attack: Attack
) -> None:
    slow, late = Study(), Study()
    copies = 150
    first = slow.instance()
    name = f"{TENANT}/{_path('overwrite/batch.zip')}"
    uploads = local_stack.blobs.get_container_client("uploads")
    uploads.upload_blob(
        name,
        zip_members((f"c{n:03}.dcm", first) for n in range(copies)),
        overwrite=True,
    )
    path = local_stack.info["app_env"]["EXCHANGE_SQLITE_PATH"]

    def staged() -> int:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM documents WHERE container = 'audit' AND "
                "json_extract(body, '$.sop_uid') = ? AND "
                "json_extract(body, '$.outcome') = 'staged'",
                (slow.sops[0],),
            ).fetchone()
        return int(count)

    # Overwrite just before the first version's ingest ends.
    assert wait_until(lambda: staged() >= copies - 3, timeout=180, interval=0.01)
    uploads.upload_blob(
        name, zip_members([("new.dcm", late.instance())]), overwrite=True
    )

    _settle(local_stack)
    versions = [
        r
        for r in _documents(local_stack, "uploads", since=attack.started)
        if r["blob"] == f"uploads/{name}"
    ]
    assert _instances(local_stack, slow.uid) == slow.sops
    assert _instances(local_stack, late.uid) == late.sops, (
        f"the overwriting upload was lost; versions ingested: "
        f"{[r['outcome'] for r in versions]}"
    )
    assert len(versions) == 2


def test_given_hostile_or_empty_uploads_then_each_is_quarantined_with_its_reason(
    local_stack: Stack, settled: Attack
) -> None:
    reasons = local_stack.quarantined()
    got = {r.name: _reasons_for(reasons, _source(r.name)) for r in settled.refused}

    assert got == {r.name: list(r.reasons) for r in settled.refused}
    mine = [r for r in reasons if r["source"].startswith(_source(""))]
    assert all(r["reason"] and r["detail"] and r["tenant"] == TENANT for r in mine)
    assert _uploads_left(local_stack) == []


def test_given_a_zip_refused_whole_then_none_of_its_members_is_archived(
    local_stack: Stack, settled: Attack
) -> None:
    study = settled.studies["mixed"]
    must_not = {sop for r in settled.refused for sop in r.never_stored}

    assert must_not
    assert not must_not & set(_instances(local_stack, study.uid))


def test_given_good_uploads_with_odd_names_and_300_members_then_all_are_stored_once(
    local_stack: Stack, settled: Attack
) -> None:
    for name, sops in settled.stored.items():
        study = next(s for s in settled.studies.values() if sops[0] in s.sops)
        held = _instances(local_stack, study.uid)
        assert set(sops) <= set(held), name
        assert len(held) == len(set(held)), f"{name}: duplicates in QIDO"
    reasons = local_stack.quarantined()
    for name in settled.stored:
        assert not _reasons_for(reasons, _source(name)), name


def test_given_the_same_file_under_three_names_then_one_stored_audit_record(
    local_stack: Stack, settled: Attack
) -> None:
    sop = settled.studies["same"].sops[0]

    stored = _audit(local_stack, step="archive", sop_uid=sop)

    assert [r["outcome"] for r in stored].count("stored") == 1
    assert {r["outcome"] for r in stored} <= {"stored", "already_stored"}


def test_given_a_stored_sop_instance_uid_with_other_content_then_a_conflict(
    local_stack: Stack, settled: Attack
) -> None:
    study = settled.studies["conflict"]
    sop = study.sops[0]
    reasons = local_stack.quarantined()

    held = _archived(local_stack, study.uid, study.series, sop)
    conflicts = _reasons_for(reasons, settled.staged["conflict/impostor.dcm"])
    outcomes = [r["outcome"] for r in _audit(local_stack, step="archive", sop_uid=sop)]

    assert conflicts == ["sop_instance_conflict"]
    assert b"ORIGINAL" in held and b"IMPOSTOR" not in held
    assert outcomes.count("stored") == 1


def test_given_two_objects_under_one_new_sop_uid_at_once_then_one_stored_one_conflict(
    local_stack: Stack, settled: Attack
) -> None:
    study = settled.studies["racing"]
    reasons = local_stack.quarantined()
    audit_stored = [
        r["sop_uid"]
        for r in _audit(local_stack, step="archive", outcome="stored")
        if r["sop_uid"] in study.sops
    ]
    failures = []
    for pair, sop in enumerate(study.sops):
        held = _archived(local_stack, study.uid, study.series, sop)
        one = _reasons_for(reasons, settled.staged[f"race/{pair}-one.dcm"])
        two = _reasons_for(reasons, settled.staged[f"race/{pair}-two.dcm"])
        loser = two if b"ONE" in held else one
        if audit_stored.count(sop) != 1 or loser != ["sop_instance_conflict"]:
            failures.append((pair, audit_stored.count(sop), one, two))

    assert failures == []


def test_given_an_upload_outside_a_tenant_folder_then_it_is_not_silently_ignored(
    local_stack: Stack, settled: Attack
) -> None:
    uploads = local_stack.blobs.get_container_client("uploads")

    still_there = uploads.get_blob_client(STRAY).exists()
    reasons = [r for r in local_stack.quarantined() if STRAY in r["source"]]

    assert not still_there or reasons, "uploads/<name> is never handled"


# Bus --------------------------------------------------------------------------------

# Message kinds that were completed without a trace; each one fixed is removed here,
# so that its test guards the fix.
_SILENTLY_COMPLETED: dict[str, str] = {}


def _message_cases() -> list[Any]:
    keys = [
        "instances-body-string",
        "instances-body-array",
        "instances-body-empty",
        "instances-missing-blob",
        "instances-unknown-tenant",
        "instances-blob-absent",
        "instances-blob-mismatch",
        "events-body-empty",
        "events-unknown-service",
        "shares-no-such-share",
        "shares-body-array",
        *(f"{queue}-{kind}" for queue in BUS_QUEUES for kind in ("not-json", "array")),
    ]
    return [
        pytest.param(
            key,
            id=key,
            marks=pytest.mark.xfail(
                strict=True,
                reason=f"FINDING: neither set aside nor dead-lettered: "
                f"{_SILENTLY_COMPLETED[key]}",
            ),
        )
        if key in _SILENTLY_COMPLETED
        else pytest.param(key, id=key)
        for key in keys
    ]


@dataclass(frozen=True)
class Delivered:
    """Where the hostile messages ended: quarantine reasons and dead letters."""

    attack: Attack
    reasons: list[dict[str, Any]]
    letters: list[dict[str, Any]]

    def outcome(
        self, message_id: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The message's quarantine reasons and dead letters."""
        queue, text = self.attack.messages[message_id]
        envelope = json.loads(text) if text.startswith("{") else {}
        body = envelope.get("body")
        staged = body.get("blob") if isinstance(body, dict) else None
        aside = [
            r
            for r in self.reasons
            if r["blob"].endswith(f"/messages/{queue}/{message_id}.json.reason.json")
            or (staged and r["source"] == f"instances/{staged}")
        ]
        letters = [
            d
            for d in self.letters
            if d["queue"] == queue
            and (d.get("message_id") == message_id or d.get("raw") == text)
        ]
        return aside, letters


@pytest.fixture(scope="module")
def delivered(local_stack: Stack, settled: Attack) -> Delivered:
    """Every hostile message delivered for the last time: completed or dead-lettered.

    Then the ``instances`` and ``shares`` queues are empty and this run's
    ``dicom-events`` messages have an outcome (that queue also carries FHIR sync's
    backlog, which is not waited for).
    """
    queues = [local_stack.queues.get_queue_client(q) for q in ("instances", "shares")]
    events = [
        m for m, (queue, _) in settled.messages.items() if queue == "dicom-events"
    ]

    def snapshot() -> Delivered:
        return Delivered(settled, local_stack.quarantined(), _dead_letters(local_stack))

    def done() -> bool:
        if any(q.get_queue_properties().approximate_message_count for q in queues):
            return False
        now = snapshot()
        return all(any(now.outcome(m)) for m in events)

    wait_until(done, timeout=MESSAGE_TIMEOUT, interval=2)
    return snapshot()


@pytest.mark.parametrize("key", _message_cases())
def test_given_a_malformed_bus_message_then_set_aside_or_dead_lettered_with_reason(
    delivered: Delivered, key: str
) -> None:
    aside, letters = delivered.outcome(f"{RUN}-{key}")

    assert len(aside) + len(letters) == 1, (aside, letters)
    if aside:
        assert aside[0]["reason"] and aside[0]["detail"]
    else:
        assert letters[0]["dead_letter_reason"]
        assert letters[0]["dead_letter_error_description"]


def test_given_all_that_then_the_host_is_still_up(
    host: HostProcess, settled: Attack
) -> None:
    assert host.process is not None and host.process.poll() is None
    assert requests.get("http://127.0.0.1:7071/api/health", timeout=10).ok


# Two hosts ------------------------------------------------------------------------


def _start_second_host() -> subprocess.Popen[bytes]:
    SECOND_HOST_LOG.parent.mkdir(parents=True, exist_ok=True)
    log = SECOND_HOST_LOG.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localdev.host",
            "--stack",
            str(STACK_FILE),
            "--workers",
            "4",
            "--http-port",
            "0",
            "--state-dir",
            str(ROOT / ".local" / "host-adversarial"),
            # Event Grid is one per DICOM service, not one per Functions instance.
            "--no-dicom-events",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_given_two_hosts_on_the_same_queues_then_each_upload_is_processed_once(
    local_stack: Stack, host: HostProcess, settled: Attack
) -> None:
    study = Study()
    uploads: dict[str, bytes] = {
        f"two-hosts/{n:02}.dcm": study.instance() for n in range(24)
    }
    uploads["two-hosts/batch.zip"] = study.zip(12)
    second = _start_second_host()
    try:
        assert wait_until(
            lambda: (
                second.poll() is not None
                or b"local host started" in SECOND_HOST_LOG.read_bytes()[-20000:]
            ),
            timeout=60,
            interval=0.5,
        )
        assert second.poll() is None, f"the second host died: see {SECOND_HOST_LOG}"
        container = local_stack.blobs.get_container_client("uploads")
        for name, data in uploads.items():
            container.upload_blob(f"{TENANT}/{_path(name)}", data, overwrite=True)
        _settle(local_stack)
        assert second.poll() is None
    finally:
        stop_host(second)

    held = _instances(local_stack, study.uid)
    assert sorted(held) == sorted(study.sops)
    archived = [r for r in _audit(local_stack, step="archive") if r["sop_uid"] in held]
    stored = [r["sop_uid"] for r in archived if r["outcome"] == "stored"]
    assert sorted(stored) == sorted(study.sops), "duplicate or missing 'stored' records"
    records = _documents(local_stack, "uploads", since=settled.started)
    for name in uploads:
        versions = [r for r in records if r["blob"] == _source(name)]
        assert [r["outcome"] for r in versions] == ["accepted"], name
        ingested = [
            r["outcome"]
            for r in _audit(local_stack, step="ingest", upload_key=versions[0]["id"])
            if r["outcome"] != "staged"
        ]
        assert ingested == ["accepted"], name


# PHI -------------------------------------------------------------------------------


def test_given_all_that_then_no_planted_phi_is_in_logs_quarantine_reasons_or_audit(
    local_stack: Stack, settled: Attack
) -> None:
    texts: dict[str, str] = {}
    with HOST_LOG.open("rb") as log:
        log.seek(settled.host_log_offset)
        texts["host log"] = log.read().decode("utf-8", "replace")
    if SECOND_HOST_LOG.exists():
        texts["second host log"] = SECOND_HOST_LOG.read_text("utf-8", "replace")
    texts["quarantine reasons"] = json.dumps(local_stack.quarantined())
    for container in ("audit", "uploads", "instances", "shares"):
        docs = _documents(local_stack, container, since=settled.started)
        texts[f"state {container}"] = json.dumps(docs, ensure_ascii=False)
    texts["dead letters"] = json.dumps(_dead_letters(local_stack))

    leaks = {
        where: [value for value in PHI if value in text]
        for where, text in texts.items()
    }
    assert leaks == {where: [] for where in texts}


# Last: an upload whose listed name the SDK cannot read.


@dataclass(frozen=True)
class Unreadable:
    later_stored: bool
    hostile_handled: bool


@pytest.fixture(scope="module")
def unreadable(local_stack: Stack, settled: Attack) -> Unreadable:
    """An upload named with backslashes and '..', and a good one listed after it."""
    hostile, after = Study(), Study()
    inbox = local_stack.blobs.get_container_client("uploads")
    hostile_name = f"{TENANT}/{RUN}/zz\\..\\..\\escape.dcm"
    inbox.upload_blob(hostile_name, hostile.instance(), overwrite=True)
    inbox.upload_blob(
        f"{TENANT}/{_path('zz/later upload.dcm')}", after.instance(), overwrite=True
    )
    try:
        later_stored = wait_until(
            lambda: bool(_instances(local_stack, after.uid)), timeout=30, interval=1
        )
        hostile_handled = bool(_instances(local_stack, hostile.uid)) or any(
            "escape" in r["source"] and RUN in r["source"]
            for r in local_stack.quarantined()
        )
    finally:
        with contextlib.suppress(ResourceNotFoundError):
            inbox.delete_blob(hostile_name)  # the backslash name reaches it
    _settle(local_stack)
    return Unreadable(later_stored, hostile_handled)


def test_given_an_unreadable_upload_name_then_uploads_listed_after_it_still_flow(
    unreadable: Unreadable,
) -> None:
    assert unreadable.later_stored


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: an upload named 'x\\..\\..\\y.dcm' (Azurite turns "
    "'\\' into '/') is listed as 'x/../../y.dcm', which the SDK cannot read under "
    "that name (it resolves the dot segments client-side): the local host skips it "
    "every pass (localdev/host_blob.py scan), so it stays in the inbox for ever, "
    "neither ingested nor quarantined",
)
def test_given_an_unreadable_upload_name_then_it_is_ingested_or_quarantined(
    unreadable: Unreadable,
) -> None:
    assert unreadable.hostile_handled
