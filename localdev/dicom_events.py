"""DICOM change events locally: what Event Grid delivers from AHDS DICOM services.

In Azure each tenant's DICOM service publishes ``Microsoft.HealthcareApis.
DicomImageCreated`` / ``DicomImageDeleted`` events to the ``dicom-events`` Service Bus
queue. Locally every tenant's archive is an Orthanc, so this module polls its REST API:
``/changes`` gives new instances (ChangeType ``NewInstance``) and, because Orthanc's
change log omits deletions, a periodic diff of ``/instances`` against the instances
seen gives deleted ones. Each event goes onto the Azurite queue in the local bus
envelope. Checkpoints (last change, known instances, per-service sequence numbers)
live in SQLite and are committed after the event is sent: a restart may repeat an
event (consumers are idempotent) but never loses one. Updates are not emitted: Orthanc
has no change type for an instance updated in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

_log = logging.getLogger(__name__)

CREATED = "Microsoft.HealthcareApis.DicomImageCreated"
DELETED = "Microsoft.HealthcareApis.DicomImageDeleted"
EVENTS_QUEUE = "dicom-events"
_EVENT_NAMESPACE = uuid.UUID("6f1c1d0e-8f4f-4a57-9a55-0c3f0a6b9d21")
_PAGE = 100


@dataclass(frozen=True)
class DicomService:
    """One tenant's archive as the emitter sees it."""

    tenant: str
    orthanc_url: str  # the REST root: the DICOMweb root without /dicom-web
    service_host: str
    partition_name: str
    username: str
    password: str


def services_from_app_env(app_env: Mapping[str, str]) -> list[DicomService]:
    """The tenants' archives named by EXCHANGE_TENANTS and their local passwords."""
    raw = app_env.get("EXCHANGE_TENANTS", "")
    if not raw:
        return []
    services = []
    for tenant, spec in json.loads(raw).items():
        root = str(spec["dicomweb_root"]).rstrip("/")
        orthanc_url = root.removesuffix("/dicom-web")
        secret = tenant.upper().replace("-", "_")
        services.append(
            DicomService(
                tenant=tenant,
                orthanc_url=orthanc_url,
                service_host=spec.get("dicom_service_host")
                or orthanc_url.split("://", 1)[-1],
                partition_name=spec.get("partition_name", "Microsoft.Default"),
                username=spec.get("dicomweb_username", ""),
                password=app_env.get(f"EXCHANGE_DICOMWEB_PASSWORD_{secret}", ""),
            )
        )
    return services


class DicomEventEmitter:
    """Polls each archive and sends its instance events to the events queue."""

    def __init__(
        self,
        services: list[DicomService],
        queue: QueueClient,
        state_path: Path,
        *,
        poll_interval: float = 2.0,
        deletion_check_interval: float = 10.0,
        timeout: float = 10.0,
    ) -> None:
        self._services = services
        self._queue = queue
        self._poll_interval = poll_interval
        self._deletion_check_interval = deletion_check_interval
        self._timeout = timeout
        state_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_path, check_same_thread=False)
        self._db_lock = threading.Lock()
        self._create_tables()
        self._sessions = {s.tenant: self._session(s) for s in services}
        self.emitted = 0
        self.cycles = 0

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; deletions are checked every few polls."""
        with contextlib.suppress(ResourceExistsError):
            self._queue.create_queue()
        last_deletion_check = 0.0
        while not stop.is_set():
            check_deletions = (
                time.monotonic() - last_deletion_check >= self._deletion_check_interval
            )
            self.poll_once(check_deletions=check_deletions)
            if check_deletions:
                last_deletion_check = time.monotonic()
            self.cycles += 1
            stop.wait(self._poll_interval)

    def poll_once(self, *, check_deletions: bool = True) -> int:
        """One pass over every archive; the number of events sent."""
        sent = 0
        for service in self._services:
            try:
                sent += self._emit_new_instances(service)
                if check_deletions:
                    sent += self._emit_deleted_instances(service)
            except requests.RequestException as exc:
                _log.warning(
                    "archive of tenant %s unreachable: %s",
                    service.tenant,
                    type(exc).__name__,
                )
        return sent

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        for session in self._sessions.values():
            session.close()

    def _emit_new_instances(self, service: DicomService) -> int:
        sent = 0
        since = self._checkpoint(service)[0]
        while True:
            page = self._get(service, f"/changes?since={since}&limit={_PAGE}")
            for change in page.get("Changes", []):
                seq = int(change["Seq"])
                if change.get("ChangeType") == "NewInstance":
                    sent += self._emit_created(service, change["ID"], seq)
                since = seq
                self._save_last_change(service, since)
            since = max(since, int(page.get("Last", since)))
            self._save_last_change(service, since)
            if page.get("Done", True):
                return sent

    def _emit_created(self, service: DicomService, orthanc_id: str, seq: int) -> int:
        uids = self._instance_uids(service, orthanc_id)
        if uids is None:
            return 0  # deleted before we saw it: nothing to announce
        event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{service.tenant}/{orthanc_id}/{seq}")
        self._send(service, CREATED, str(event_id), uids)
        with self._db_lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                (service.tenant, orthanc_id, seq, *uids),
            )
        return 1

    def _emit_deleted_instances(self, service: DicomService) -> int:
        current = set(self._get(service, "/instances"))
        with self._db_lock:
            known = self._db.execute(
                "SELECT orthanc_id, created_seq, study_uid, series_uid, sop_uid "
                "FROM instances WHERE tenant = ?",
                (service.tenant,),
            ).fetchall()
        sent = 0
        for orthanc_id, created_seq, *uids in known:
            if orthanc_id in current:
                continue
            event_id = uuid.uuid5(
                _EVENT_NAMESPACE, f"{service.tenant}/{orthanc_id}/{created_seq}/deleted"
            )
            self._send(service, DELETED, str(event_id), tuple(uids))
            with self._db_lock, self._db:
                self._db.execute(
                    "DELETE FROM instances WHERE tenant = ? AND orthanc_id = ?",
                    (service.tenant, orthanc_id),
                )
            sent += 1
        return sent

    def _instance_uids(
        self, service: DicomService, orthanc_id: str
    ) -> tuple[str, str, str] | None:
        """(study, series, SOP instance) UIDs of an Orthanc instance, if it exists."""
        try:
            instance = self._get(service, f"/instances/{orthanc_id}")
            series = self._get(service, f"/series/{instance['ParentSeries']}")
            study = self._get(service, f"/studies/{series['ParentStudy']}")
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise
        return (
            study["MainDicomTags"]["StudyInstanceUID"],
            series["MainDicomTags"]["SeriesInstanceUID"],
            instance["MainDicomTags"]["SOPInstanceUID"],
        )

    def _send(
        self,
        service: DicomService,
        event_type: str,
        event_id: str,
        uids: tuple[str, ...],
    ) -> None:
        study_uid, series_uid, sop_uid = uids
        sequence = self._next_sequence(service)
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        event = {
            "id": event_id,
            "topic": f"/localdev/dicomservices/{service.tenant}",
            "subject": f"{service.service_host}/studies/{study_uid}"
            f"/series/{series_uid}/instances/{sop_uid}",
            "eventType": event_type,
            "eventTime": now,
            "dataVersion": "1",
            "metadataVersion": "1",
            "data": {
                "partitionName": service.partition_name,
                "imageStudyInstanceUid": study_uid,
                "imageSeriesInstanceUid": series_uid,
                "imageSopInstanceUid": sop_uid,
                "serviceHostName": service.service_host,
                "sequenceNumber": sequence,
            },
        }
        envelope = {"message_id": event_id, "body": event, "enqueued_time": now}
        self._queue.send_message(json.dumps(envelope))
        with self._db_lock, self._db:
            self._db.execute(
                "UPDATE checkpoints SET sequence = ? WHERE tenant = ?",
                (sequence, service.tenant),
            )
        self.emitted += 1

    def _checkpoint(self, service: DicomService) -> tuple[int, int]:
        with self._db_lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, 0, 0)", (service.tenant,)
            )
            row = self._db.execute(
                "SELECT last_change, sequence FROM checkpoints WHERE tenant = ?",
                (service.tenant,),
            ).fetchone()
        return int(row[0]), int(row[1])

    def _next_sequence(self, service: DicomService) -> int:
        return self._checkpoint(service)[1] + 1

    def _save_last_change(self, service: DicomService, seq: int) -> None:
        with self._db_lock, self._db:
            self._db.execute(
                "UPDATE checkpoints SET last_change = ? WHERE tenant = ?",
                (seq, service.tenant),
            )

    def _get(self, service: DicomService, path: str) -> Any:
        response = self._sessions[service.tenant].get(
            service.orthanc_url + path, timeout=self._timeout
        )
        response.raise_for_status()
        return response.json()

    def _create_tables(self) -> None:
        with self._db_lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints (tenant TEXT PRIMARY KEY, "
                "last_change INTEGER NOT NULL, sequence INTEGER NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS instances (tenant TEXT, orthanc_id TEXT, "
                "created_seq INTEGER, study_uid TEXT, series_uid TEXT, sop_uid TEXT, "
                "PRIMARY KEY (tenant, orthanc_id))"
            )

    @staticmethod
    def _session(service: DicomService) -> requests.Session:
        session = requests.Session()
        if service.username:
            session.auth = (service.username, service.password)
        return session
