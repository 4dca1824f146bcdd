"""The de-identification engine over every .dcm that pydicom and pydicom-data ship.

Measured here: no attribute keeps its original value where Table E.1-1 says remove
or replace; no private attribute survives; UIDs are the same in two processes;
dciodvfy finds no error in an output whose input had none. The counts are printed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from shared_code.domain import deid
from shared_code.domain.deid import table
from shared_code.domain.dicom_input import to_part10
from shared_code.errors import Quarantine

KEY = b"corpus-key-0123456789abcdef0123456789"
POLICY = deid.DeidPolicy(burned_in="flag")  # every file goes through; risk flagged
ROOT = Path(__file__).resolve().parents[2]
REPLACED = {"X", "Z", "D", "U", "X/Z", "X/D", "Z/D", "X/Z/D"}


def corpus_files() -> list[Path]:
    """Every .dcm file of pydicom's test data and of the pydicom-data package."""
    import data_store  # pydicom-data's package
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent, Path(data_store.__file__).parent]
    return sorted(p for root in roots for p in root.rglob("*.dcm") if p.is_file())


@dataclass
class Outcome:
    path: Path
    outcome: str  # released, quarantined, unwritable, unreadable
    reason: str = ""
    original: Dataset | None = None
    output: bytes = b""


def deidentify_corpus() -> list[Outcome]:
    outcomes = []
    for path in corpus_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                dataset = pydicom.dcmread(path)
                original = pydicom.dcmread(path)
            except Exception:  # not readable as DICOM at all
                outcomes.append(Outcome(path, "unreadable"))
                continue
            try:
                needles = deid.collect_needles(dataset, POLICY)
                deid.deidentify(dataset, KEY, POLICY)
                deid.check_no_leak(needles, dataset)
                output = to_part10(dataset)
            except Quarantine as exc:
                outcomes.append(Outcome(path, "quarantined", exc.reason))
                continue
            except (AttributeError, ValueError) as exc:
                # No File Meta to write (the upload parser refuses these first).
                outcomes.append(Outcome(path, "unwritable", type(exc).__name__))
                continue
        outcomes.append(Outcome(path, "released", "", original, output))
    return outcomes


def uid_digest() -> str:
    """A digest of every UID of every released output, for the two-process test."""
    digest = hashlib.sha256()
    for outcome in deidentify_corpus():
        if outcome.outcome == "released":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(io.BytesIO(outcome.output))
            for path, element in _walk(dataset, ""):
                if element.VR == "UI":
                    digest.update(f"{path}={element.value}\n".encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def corpus() -> list[Outcome]:
    return deidentify_corpus()


def test_the_corpus_is_the_shipped_one(
    corpus: list[Outcome], capsys: pytest.CaptureFixture[str]
) -> None:
    counts = Counter((o.outcome, o.reason) for o in corpus)
    with capsys.disabled():
        print(f"\ncorpus: {len(corpus)} .dcm files; {dict(counts)}")
    assert len(corpus) >= 160
    released = [o for o in corpus if o.outcome == "released"]
    assert len(released) >= 150
    reasons = {o.reason for o in corpus if o.outcome == "quarantined"}
    assert "deid_leak" not in reasons, [o.path.name for o in corpus if o.reason]


def test_no_removed_or_replaced_attribute_keeps_its_value(
    corpus: list[Outcome],
) -> None:
    kept = []
    checked = 0
    for outcome in corpus:
        if outcome.original is None:
            continue
        output = _read(outcome.output)
        after = dict(_walk(output, ""))
        for path, element in _walk(outcome.original, ""):
            found = table.table_action(element.tag, POLICY)
            if found is None or found[0] not in REPLACED or element.VR == "SQ":
                continue
            if element.value in (None, "", b"") or path not in after:
                continue
            checked += 1
            if after[path].value == element.value:
                kept.append(f"{outcome.path.name} {path}")
    assert checked > 1000
    assert kept == []


def test_no_private_attribute_survives(corpus: list[Outcome]) -> None:
    survivors = [
        f"{o.path.name} {path}"
        for o in corpus
        if o.outcome == "released"
        for path, element in _walk(_read(o.output), "")
        if element.tag.is_private
    ]
    assert survivors == []


def test_uids_are_byte_identical_in_two_processes() -> None:
    script = (
        "import runpy\n"
        f"ns = runpy.run_path({str(Path(__file__))!r})\n"
        "print(ns['uid_digest']())\n"
    )
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            check=True,
            cwd=ROOT,
            env=env,
        )
        digests.append(done.stdout.decode().strip())
    assert digests[0] == digests[1]
    assert len(digests[0]) == 64


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools missing")
def test_no_newly_invalid_file_under_dciodvfy(
    corpus: list[Outcome], capsys: pytest.CaptureFixture[str]
) -> None:
    newly_invalid = []
    valid_before = 0
    with tempfile.TemporaryDirectory() as work:
        output_path = Path(work) / "out.dcm"
        for outcome in corpus:
            if outcome.outcome != "released":
                continue
            if _errors(outcome.path):
                continue
            valid_before += 1
            output_path.write_bytes(outcome.output)
            errors = _errors(output_path)
            if errors:
                newly_invalid.append(f"{outcome.path.name}: {errors[0]}")
    with capsys.disabled():
        print(
            f"\ndciodvfy: {valid_before} error-free inputs, "
            f"{len(newly_invalid)} newly invalid"
        )
    assert newly_invalid == []


def _errors(path: Path) -> list[str]:
    done = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace"
    )
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def _walk(dataset: Dataset, prefix: str) -> Iterator[tuple[str, pydicom.DataElement]]:
    for element in dataset:
        path = f"{prefix}({element.tag.group:04X},{element.tag.element:04X})"
        yield path, element
        if element.VR == "SQ":
            for index, item in enumerate(element.value or ()):
                yield from _walk(item, f"{path}[{index}].")
