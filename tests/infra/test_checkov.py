"""checkov's Bicep checks over infra/, offline, in its own venv (.venv-iac).

checkov exits 0 when a file does not parse, so the JSON summary's parsing_errors is
what fails the run. Each skip is a ``// checkov:skip=ID: reason`` inside the resource;
a skip without a reason, or one that no longer matches a finding, fails too.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.infra.bicep import INFRA, bicep_files

CHECKOV = ROOT / ".venv-iac" / "bin" / "checkov"
_SKIP = re.compile(r"checkov:skip=([A-Z0-9_]+):?(.*)")


@cache
def checkov_report() -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run scripts/install.sh")
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(INFRA),
            "--framework",
            "bicep",
            "--skip-download",
            "--output",
            "json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # 0: all passed; 1: a check failed. Anything else is checkov itself failing.
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    # One framework gives one report object; several would give a list.
    assert isinstance(report, dict), "expected one bicep report"
    return report


def test_checkov_parses_every_bicep_file() -> None:
    summary = checkov_report()["summary"]

    assert summary["parsing_errors"] == 0, summary
    assert summary["resource_count"] > 0, summary


def test_checkov_finds_no_failed_check() -> None:
    failed = checkov_report()["results"].get("failed_checks", [])

    assert [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in failed
    ] == []


def test_every_skip_is_justified_and_still_needed() -> None:
    skipped = checkov_report()["results"].get("skipped_checks", [])
    reported = {c["check_id"] for c in skipped}
    written = [
        (path.name, match.group(1), match.group(2).strip())
        for path in bicep_files()
        for match in _SKIP.finditer(path.read_text())
    ]

    assert [w for w in written if len(w[2]) < 20] == [], "a skip needs its reason"
    assert [w for w in written if w[1] not in reported] == [], "stale skip"
