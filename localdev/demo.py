"""The demo: real DICOM through the real pipeline on the local stack, with a summary.

Run by scripts/demo.sh after the stack is up. Starts the local Functions host,
uploads the scenario's files, follows the pipeline, shares two studies to other
tenants through the HTTP API, and prints what each tenant holds. Exits 1 when the
pipeline did not do its job.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import requests

from localdev.scenario import (
    ROOT,
    Expected,
    Stack,
    build_uploads,
    expected_from,
    start_host,
    stop_host,
    wait_until,
)

TIMEOUT = 600
UID_PREFIX = 12


def main() -> int:
    stack = Stack()
    uploads = build_uploads()
    expected = expected_from(uploads, stack.pseudonym_keys())
    problems: list[str] = []

    host = start_host(ROOT / ".local" / "logs" / "host.log")
    try:
        if not wait_until(_host_up(stack), timeout=60):
            print("the local Functions host did not come up: see .local/logs/host.log")
            return 1
        started = time.monotonic()
        print(f"Uploading {len(uploads)} uploads …")
        for upload in uploads:
            stack.upload(upload)
            print(f"  uploads/{upload.tenant}/{upload.name} ({len(upload.data)} bytes)")

        print("Ingest, archive and FHIR sync …")
        _wait_for_archives(stack, expected, problems)
        archived_at = time.monotonic()
        uploaded_instances = sum(len(s) for s in expected.instances.values())

        print("Sharing studies between tenants …")
        shares = _share_studies(stack, expected, problems)
        _wait_for_archives(stack, expected, problems)
        _wait_for_fhir(stack, expected, problems)
        finished = time.monotonic()
    finally:
        stop_host(host)

    _summary(stack, uploads, expected, shares, problems)
    rate = uploaded_instances / max(archived_at - started, 1e-9)
    print(
        f"\nTimes: {archived_at - started:.1f} s to archive {uploaded_instances} "
        f"uploaded instances ({rate:.1f} instances/s end to end); "
        f"{finished - started:.1f} s including shares and FHIR."
    )
    if problems:
        print("\nThe pipeline did NOT do its job:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(
        "\nAll checks passed: every good instance archived and in FHIR, every bad "
        "upload quarantined with its reason, every share complete."
    )
    return 0


def _host_up(stack: Stack) -> Any:
    def check() -> bool:
        try:
            return stack.http.get("http://127.0.0.1:7071/api/health", timeout=2).ok
        except requests.RequestException:
            return False

    return check


def _missing(stack: Stack, expected: Expected) -> dict[str, int]:
    missing = {}
    for tenant, sops in expected.instances.items():
        stored = {
            sop
            for study in stack.stored_instances(tenant).values()
            for series in study.values()
            for sop in series
        }
        if tenant != "research":
            missing[tenant] = len(sops - stored)
        else:  # UIDs are keyed pseudonyms there: count instead
            missing[tenant] = max(len(sops) - len(stored), 0)
    return missing


def _wait_for_archives(stack: Stack, expected: Expected, problems: list[str]) -> None:
    def done() -> bool:
        return not any(_missing(stack, expected).values()) and stack.pending() == 0

    def progress() -> str:
        missing = _missing(stack, expected)
        left = ", ".join(f"{t}: {n} to go" for t, n in missing.items())
        return f"{left}; {stack.pending()} messages or uploads pending"

    if not wait_until(done, timeout=TIMEOUT, interval=2, progress=progress):
        problems.append(f"instances missing from archives: {_missing(stack, expected)}")


def _share_studies(
    stack: Stack, expected: Expected, problems: list[str]
) -> list[dict[str, Any]]:
    studies = expected.studies["trust-a"]
    multi_series = sorted(
        (uid for uid, series in studies.items() if len(series) > 1),
        key=lambda uid: -sum(len(s) for s in studies[uid].values()),
    )
    plan = [(multi_series[0], "trust-b"), (multi_series[1], "research")]
    token = stack.token(["trust-a"])
    shares = []
    for study_uid, to_tenant in plan:
        response = stack.api(
            "POST",
            "shares",
            token,
            json={
                "study_uid": study_uid,
                "from_tenant": "trust-a",
                "to_tenant": to_tenant,
            },
        )
        if response.status_code != 202:
            problems.append(f"POST /api/shares answered {response.status_code}")
            continue
        share = response.json()
        print(
            f"  share {share['id'][:8]}: study …{study_uid[-UID_PREFIX:]} → {to_tenant}"
        )
        shares.append(share)
        key = stack.pseudonym_keys().get(to_tenant, b"")
        expected.copy_study(study_uid, "trust-a", to_tenant, key)

    def complete() -> bool:
        return all(
            _share(stack, token, s)["status"] in ("COMPLETE", "FAILED") for s in shares
        )

    def progress() -> str:
        return "; ".join(
            f"{s['id'][:8]} {_share(stack, token, s)['status']}" for s in shares
        )

    wait_until(complete, timeout=TIMEOUT, interval=2, progress=progress)
    final = [_share(stack, token, s) for s in shares]
    for share in final:
        if share["status"] != "COMPLETE":
            problems.append(f"share {share['id'][:8]} ended {share['status']}")
    return final


def _share(stack: Stack, token: str, share: dict[str, Any]) -> dict[str, Any]:
    response = stack.api("GET", f"shares/{share['id']}", token)
    return response.json() if response.ok else {**share, "status": "UNKNOWN"}


def _fhir_matches(stack: Stack, tenant: str, expected: Expected) -> tuple[int, int]:
    """(expected studies whose ImagingStudy matches exactly, expected studies)."""
    studies = expected.studies.get(tenant, {})
    resources = {
        _study_uid(r): r
        for r in stack.fhir_search(tenant, "ImagingStudy")
        if r.get("status") == "available"
    }
    matching = 0
    for study_uid, series in studies.items():
        resource = resources.get(study_uid)
        if resource is None:
            continue
        fhir_series = {
            s["uid"]: {i["uid"] for i in s.get("instance", [])}
            for s in resource.get("series", [])
        }
        if fhir_series == series and resource.get("numberOfInstances") == sum(
            len(s) for s in series.values()
        ):
            matching += 1
    return matching, len(studies)


def _study_uid(resource: dict[str, Any]) -> str:
    for identifier in resource.get("identifier", []):
        if identifier.get("system") == "urn:dicom:uid":
            return str(identifier["value"]).removeprefix("urn:oid:")
    return ""


def _wait_for_fhir(stack: Stack, expected: Expected, problems: list[str]) -> None:
    tenants = list(expected.studies)

    def done() -> bool:
        return all(
            m == n for m, n in (_fhir_matches(stack, t, expected) for t in tenants)
        )

    def progress() -> str:
        return "; ".join(
            "{}: {}/{} ImagingStudy match".format(t, *_fhir_matches(stack, t, expected))
            for t in tenants
        )

    print("Waiting for FHIR to match every archive …")
    if not wait_until(done, timeout=TIMEOUT, interval=2, progress=progress):
        problems.append(f"FHIR does not match the archives: {progress()}")


def _summary(
    stack: Stack,
    uploads: list[Any],
    expected: Expected,
    shares: list[dict[str, Any]],
    problems: list[str],
) -> None:
    print("\n== Instances stored per tenant (QIDO-RS), this run's studies ==")
    print(
        f"{'tenant':<10} {'studies':>8} {'series':>7} {'instances':>10} "
        f"{'ImagingStudy ok':>16} {'archive total':>14}"
    )
    for tenant, studies in expected.studies.items():
        archive = stack.stored_instances(tenant)
        mine = {uid: archive.get(uid, {}) for uid in studies}
        series = sum(len(s) for s in mine.values())
        instances = sum(len(i) for s in mine.values() for i in s.values())
        total = sum(len(i) for s in archive.values() for i in s.values())
        matching, _ = _fhir_matches(stack, tenant, expected)
        print(
            f"{tenant:<10} {len(mine):>8} {series:>7} {instances:>10} "
            f"{matching:>16} {total:>14}"
        )

    print("\n== Quarantined, with reasons ==")
    reasons = stack.quarantined()
    for reason in sorted(reasons, key=lambda r: r["blob"]):
        print(f"  {reason['blob']:<58} {reason['reason']}: {reason['detail'][:60]}")
    bad = [u for u in uploads if u.expect == "quarantined"]
    for upload in bad:
        source = f"uploads/{upload.tenant}/{upload.name}"
        if not any(r["source"].startswith(source) for r in reasons):
            problems.append(f"{source} was not quarantined")

    print("\n== ImagingStudy resources of this run's studies ==")
    for tenant, studies in expected.studies.items():
        for resource in stack.fhir_search(tenant, "ImagingStudy"):
            if _study_uid(resource) not in studies:
                continue
            print(
                f"  {tenant:<9} ImagingStudy/{resource['id']:<38} "
                f"study …{_study_uid(resource)[-UID_PREFIX:]:<12} "
                f"series {resource.get('numberOfSeries', 0):>2} "
                f"instances {resource.get('numberOfInstances', 0):>3} "
                f"{resource.get('status')}"
            )

    print("\n== Shares ==")
    for share in shares:
        print(
            f"  {share['id'][:8]} {share['from_tenant']} → {share['to_tenant']:<9} "
            f"study …{share['study_uid'][-UID_PREFIX:]} {share['status']} "
            f"copied {share.get('copied')}/{share.get('total')} "
            f"failed {share.get('failed')}"
        )

    dead = stack.dead_letters()
    if any(dead.values()):
        problems.append(f"dead-lettered messages: {dead}")
    print(f"\nDead-letter queues: {dead}")
    print(f"Host log: {Path('.local/logs/host.log')}")


if __name__ == "__main__":
    sys.exit(main())
