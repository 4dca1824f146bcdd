"""Reconciliation: walk each tenant's change feed and heal what the events missed.

Events can be lost (a dead-lettered message after a long FHIR outage, a skipped
coalesced event whose sync failed later, a subscription gap). The change feed is the
archive's own record of every change, so walking it from a checkpoint and re-syncing
each study it names converges FHIR on the archive. A sync is idempotent and skips
unchanged writes, so studies the events already synced cost reads only.

The checkpoint lives in the state store (container ``checkpoints``, one document
per tenant) and advances only after every study of a page has synced: a FHIR service
that is down stops the walk with ``RetryLater`` and the next run resumes from the
same place. A study the mapping cannot hold (``Quarantine``) is audited with its
reason and the walk goes on, as a poisoned event would be set aside.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from shared_code.config import TenantSettings
from shared_code.errors import Quarantine
from shared_code.ports import ChangeFeed, DicomArchive, FhirStore, StateStore
from shared_code.services import audit
from shared_code.services.locks import lease
from shared_code.services.study_events import sync_study_with_mark

_log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PAGE_SIZE = 200  # the AHDS v2 change feed's largest page


@dataclass(frozen=True)
class ReconcileOutcome:
    """What one walk of a tenant's change feed did."""

    tenant: str
    changes: int
    studies: int
    writes: int
    quarantined: int
    done: bool


def reconcile_tenant(
    tenant: TenantSettings,
    feed: ChangeFeed,
    archive: DicomArchive,
    fhir: FhirStore,
    state: StateStore,
    *,
    max_pages: int = 50,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReconcileOutcome:
    """Sync every study the change feed names after the tenant's checkpoint.

    At most ``max_pages`` pages per run, so a timer run stays within its time
    limit; ``done`` is False when the feed has more and the next run goes on.
    """
    doc_id = f"change-feed:{tenant.name}"
    stored = state.get(CHECKPOINTS, tenant.name, doc_id)
    checkpoint = stored.get("checkpoint") if stored else None
    changes = studies = writes = quarantined = 0
    done = False

    for _ in range(max_pages):
        page = feed.read_changes(checkpoint, PAGE_SIZE)
        changes += len(page.changes)
        # A page names a study once per instance; once per page is enough.
        for study_uid in dict.fromkeys(
            change.study_instance_uid for change in page.changes
        ):
            studies += 1
            try:
                with lease(state, f"fhir-sync:{tenant.name}"):
                    synced = sync_study_with_mark(
                        study_uid, tenant, archive, fhir, state, clock
                    )
                writes += synced.writes
            except Quarantine as error:
                quarantined += 1
                audit.record(
                    state,
                    tenant.name,
                    "reconcile",
                    "quarantined",
                    study_uid=study_uid,
                    detail=f"{error.reason}: {error.detail}"[:500],
                )
        checkpoint = page.checkpoint
        state.upsert(
            CHECKPOINTS,
            {"id": doc_id, "pk": tenant.name, "checkpoint": checkpoint},
        )
        if page.done:
            done = True
            break

    outcome = ReconcileOutcome(tenant.name, changes, studies, writes, quarantined, done)
    _log.info(
        "reconcile %s",
        tenant.name,
        extra={
            "tenant": tenant.name,
            "changes": changes,
            "studies": studies,
            "fhir_writes": writes,
            "quarantined": quarantined,
            "done": done,
        },
    )
    if quarantined:
        _log.warning(
            "reconcile quarantined studies",
            extra={"tenant": tenant.name, "quarantined": quarantined},
        )
    return outcome


def reconcile_all(
    tenants: list[TenantSettings],
    *,
    archive_for: Callable[[str], DicomArchive],
    fhir_for: Callable[[str], FhirStore],
    state: StateStore,
) -> list[ReconcileOutcome]:
    """Each tenant in turn; one tenant's outage does not stop the others."""
    outcomes = []
    for tenant in tenants:
        archive = archive_for(tenant.name)
        if not isinstance(archive, ChangeFeed):
            _log.warning("no change feed", extra={"tenant": tenant.name})
            continue
        try:
            outcomes.append(
                reconcile_tenant(tenant, archive, archive, fhir_for(tenant.name), state)
            )
        except Exception:
            # Logged and left for the next run: its checkpoint did not move.
            _log.exception("reconcile failed", extra={"tenant": tenant.name})
    return outcomes
