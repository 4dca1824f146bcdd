"""The audit trail: one record per pipeline step, kept in the state store.

Records carry UIDs (as stored in the tenant's archive), the step and its outcome;
never a patient's name, ID or dates.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from shared_code.ports import JsonDict, StateStore

AUDIT = "audit"


def record(
    state: StateStore,
    tenant: str,
    step: str,
    outcome: str,
    *,
    study_uid: str = "",
    sop_uid: str = "",
    detail: str = "",
    **fields: Any,
) -> JsonDict:
    """Append one audit record; ``step`` is e.g. ingest, archive, fhir, share."""
    doc: JsonDict = {
        "id": str(uuid.uuid4()),
        "pk": tenant,
        "tenant": tenant,
        "step": step,
        "outcome": outcome,
        "study_uid": study_uid,
        "sop_uid": sop_uid,
        "detail": detail,
        "at": datetime.now(UTC).isoformat(),
        **fields,
    }
    return state.create(AUDIT, doc)


def trail(state: StateStore, tenant: str, **equals: Any) -> list[JsonDict]:
    """A tenant's audit records matching ``equals``, oldest first."""
    return sorted(state.query(AUDIT, tenant, **equals), key=lambda doc: doc["at"])
