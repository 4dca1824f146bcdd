"""De-identification throughput on the shipped corpus, against three open-source
tools and a floor, all in one process run on the same in-memory files.

Corpus: every .dcm file of pydicom's test data and of pydicom-data. Each contestant
reads each file from memory with pydicom, de-identifies it with its defaults and
writes it to memory with the same plain ``pydicom.dcmwrite``; the floor reads and
writes with no change. Files a contestant fails on are counted and still timed.
Prints files/s, MB/s and ratios.

The archive's own path writes with ``to_part10`` (``enforce_file_format``, which
validates and completes the File Meta: about 10% dearer than a plain write on this
corpus); it is timed on its own line, for information, so that the contestants'
ratios compare de-identification and not two writers.

Run: scripts/bench.sh   (or .venv/bin/python -m bench.deid_bench [--rounds N])
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom

from shared_code.domain import deid
from shared_code.domain.dicom_input import to_part10

_log = logging.getLogger(__name__)

KEY = b"bench-key-0123456789abcdef0123456789"
POLICY = deid.DeidPolicy(burned_in="flag")  # time every file, none set aside

Step = Callable[[bytes], None]


def corpus() -> list[bytes]:
    """The bytes of every readable .dcm that pydicom and pydicom-data ship."""
    import data_store  # pydicom-data
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent, Path(data_store.__file__).parent]
    files = []
    for path in sorted(p for root in roots for p in root.rglob("*.dcm")):
        data = path.read_bytes()
        try:
            pydicom.dcmread(io.BytesIO(data))
        except Exception:  # not DICOM: no contestant gets it
            continue
        files.append(data)
    return files


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _write(dataset: pydicom.Dataset) -> None:
    pydicom.dcmwrite(io.BytesIO(), dataset)


def floor(data: bytes) -> None:
    _write(_read(data))


def engine(data: bytes) -> None:
    dataset = _read(data)
    deid.deidentify(dataset, KEY, POLICY)
    _write(dataset)


def engine_with_gate(data: bytes) -> None:
    dataset = _read(data)
    needles = deid.collect_needles(dataset, POLICY)
    deid.deidentify(dataset, KEY, POLICY)
    deid.check_no_leak(needles, dataset)
    _write(dataset)


def archive_path(data: bytes) -> None:
    """What ``prepare_for_tenant`` does for a research tenant, Part 10 writer too."""
    dataset = _read(data)
    needles = deid.collect_needles(dataset, POLICY)
    deid.deidentify(dataset, KEY, POLICY)
    deid.check_no_leak(needles, dataset)
    to_part10(dataset)


def dicognito_step() -> Step:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()

    def step(data: bytes) -> None:
        dataset = _read(data)
        anonymizer.anonymize(dataset)
        _write(dataset)

    return step


def deid_step() -> Step:
    from deid.dicom import replace_identifiers

    logging.getLogger("deid").setLevel(logging.ERROR)

    def step(data: bytes) -> None:
        [dataset] = replace_identifiers([_read(data)], save=False)
        _write(dataset)

    return step


def dicom_anonymizer_step() -> Step:
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset

    def step(data: bytes) -> None:
        dataset = _read(data)
        anonymize_dataset(dataset)
        _write(dataset)

    return step


def measure(step: Step, files: list[bytes], rounds: int) -> tuple[float, int]:
    """Seconds for ``rounds`` passes over ``files`` and the failures of one pass."""
    failures = 0
    started = time.perf_counter()
    for round_ in range(rounds):
        for data in files:
            try:
                step(data)
            except Exception:
                failures += round_ == 0
    return time.perf_counter() - started, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)

    files = corpus()
    megabytes = sum(len(data) for data in files) / 1e6
    contestants: list[tuple[str, Step]] = [
        ("floor (pydicom read+write)", floor),
        ("engine", engine),
        ("engine + leak gate", engine_with_gate),
        ("archive path (+ to_part10)", archive_path),
        ("dicognito", dicognito_step()),
        ("deid", deid_step()),
        ("dicom-anonymizer", dicom_anonymizer_step()),
    ]
    for _, step in contestants:  # warm up imports and caches
        for data in files[:5]:
            with contextlib.suppress(Exception):
                step(data)

    print(f"corpus: {len(files)} files, {megabytes:.1f} MB, {args.rounds} rounds")
    rates: dict[str, float] = {}
    for name, step in contestants:
        seconds, failures = measure(step, files, args.rounds)
        rates[name] = len(files) * args.rounds / seconds
        mb_s = megabytes * args.rounds / seconds
        print(
            f"{name:28s} {rates[name]:8.1f} files/s {mb_s:7.1f} MB/s"
            f"  failed on {failures}"
        )

    tools = ("dicognito", "deid", "dicom-anonymizer")
    fastest = max(tools, key=lambda tool: rates[tool])
    floor_rate = rates["floor (pydicom read+write)"]
    for name in ("engine", "engine + leak gate"):
        print(
            f"{name}: {rates[name] / rates[fastest]:.2f}x the fastest tool "
            f"({fastest}; target >= 2x), {rates[name] / floor_rate:.2f}x the floor "
            "(target >= 0.8x)"
        )
    name = "archive path (+ to_part10)"
    print(
        f"{name}: {rates[name] / rates[fastest]:.2f}x the fastest tool, "
        f"{rates[name] / floor_rate:.2f}x the floor (information)"
    )


if __name__ == "__main__":
    main()
