"""Where a study stands for one tenant: archived instances, FHIR resource, shares.

Built from the audit trail and the share records in the state store, so it answers even
while the archive or the FHIR service is down.
"""

from __future__ import annotations

from typing import Any

from shared_code.errors import RequestRejected
from shared_code.ports import JsonDict, StateStore
from shared_code.services import audit

SHARES = "shares"
_STORED = ("stored", "already_stored")


def study_status(study_uid: str, *, tenant: str, state: StateStore) -> JsonDict:
    """The study as ``tenant`` sees it; 404 when the tenant has never seen it."""
    records = audit.trail(state, tenant, study_uid=study_uid)
    shares = [
        _share_summary(share)
        for share in state.query(SHARES, None, study_uid=study_uid)
        if tenant in (share.get("from_tenant"), share.get("to_tenant"))
    ]
    if not records and not shares:
        raise RequestRejected(404, "no such study for this tenant")

    stored = {
        r["sop_uid"]
        for r in records
        if r["step"] == "archive" and r["outcome"] in _STORED and r["sop_uid"]
    }
    fhir = [r for r in records if r["step"] == "fhir"]
    latest_fhir = fhir[-1] if fhir else None
    return {
        "study_uid": study_uid,
        "tenant": tenant,
        "archive": {"instances_stored": len(stored)},
        "fhir": {
            "imaging_study_id": latest_fhir.get("imaging_study_id"),
            "status": latest_fhir["outcome"],
            "series": latest_fhir.get("series"),
            "instances": latest_fhir.get("instances"),
            "at": latest_fhir["at"],
        }
        if latest_fhir
        else None,
        "shares": shares,
        "trail": _trail_summary(records),
    }


def _trail_summary(records: list[JsonDict]) -> list[dict[str, Any]]:
    """One row per (step, outcome), in order of first appearance, with counts."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record["step"], record["outcome"])
        row = rows.setdefault(
            key,
            {"step": key[0], "outcome": key[1], "count": 0, "first_at": record["at"]},
        )
        row["count"] += 1
        row["last_at"] = record["at"]
    return list(rows.values())


def _share_summary(share: JsonDict) -> dict[str, Any]:
    keys = ("id", "from_tenant", "to_tenant", "status", "total", "copied", "failed")
    return {key: share.get(key) for key in keys}
