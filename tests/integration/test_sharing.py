"""Archiving and sharing against real Orthancs: trust-a to trust-b and to research.

The state store and bus are the in-memory doubles of tests/unit/services; the
archives are the `stack` fixture's Orthanc + DICOMweb servers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from shared_code.adapters.dicomweb import DicomWebArchive
from shared_code.errors import RequestRejected
from shared_code.services import archive, sharing
from tests.integration.test_dicomweb import fresh_instance, part10
from tests.unit.services.test_archive import (
    MemoryBlobs,
    MemoryState,
    make_settings,
    stage,
)
from tests.unit.services.test_sharing import MemoryBus


@pytest.fixture
def world(stack: dict[str, Any]) -> dict[str, Any]:
    archives = {
        name: DicomWebArchive(
            spec["dicomweb_root"], username=spec["username"], password=spec["password"]
        )
        for name, spec in stack["tenants"].items()
        if name in ("trust-a", "trust-b", "research")
    }
    return {
        "settings": make_settings(trust_a=("trust-b", "research")),
        "state": MemoryState(),
        "blobs": MemoryBlobs(),
        "bus": MemoryBus(),
        "archives": archives,
    }


def archive_study(
    world: dict[str, Any], *names: str, leak_in: str = ""
) -> tuple[str, list[str]]:
    """A new study of the named test files, archived into trust-a by the use case.

    ``leak_in`` names a file whose Manufacturer (kept by the basic profile) is made to
    repeat the patient's name: a leak the de-identification cannot see.
    """
    study, series = generate_uid(), generate_uid()
    sops = []
    for name in names:
        dataset = fresh_instance(name, study=study, series=series)
        if name == leak_in:
            dataset.PatientName = "DOE^JANE"
            dataset.Manufacturer = "Scanned for DOE^JANE"
        outcome = archive.archive_instance(
            stage(world["blobs"], "trust-a", part10(dataset)),
            settings=world["settings"],
            blobs=world["blobs"],
            archive_for=world["archives"].__getitem__,
            state=world["state"],
        )
        assert outcome.outcome == "stored"
        sops.append(dataset.SOPInstanceUID)
    return study, sops


def test_archive_instance_into_orthanc_and_conflict(world):
    dataset = fresh_instance()
    message = stage(world["blobs"], "trust-a", part10(dataset))
    run = {
        "settings": world["settings"],
        "blobs": world["blobs"],
        "archive_for": world["archives"].__getitem__,
        "state": world["state"],
    }

    stored = archive.archive_instance(message, **run)
    # A fresh state store: the archive's copy is compared byte for byte.
    run["state"] = MemoryState()
    again = archive.archive_instance(
        stage(world["blobs"], "trust-a", part10(dataset)), **run
    )
    dataset.InstanceNumber = 42
    conflict = archive.archive_instance(
        stage(world["blobs"], "trust-a", part10(dataset)), **run
    )

    assert stored.outcome == "stored"
    assert again.outcome == "already_stored"
    assert conflict.reason == "sop_instance_conflict"


def test_share_to_clinical_tenant_copies_the_study(world):
    study, sops = archive_study(world, "CT_small.dcm", "MR_small.dcm", "CT_small.dcm")
    share = sharing.request_share(
        settings=world["settings"],
        state=world["state"],
        bus=world["bus"],
        archive_for=world["archives"].__getitem__,
        principal_tenant="trust-a",
        study_uid=study,
        from_tenant="trust-a",
        to_tenant="trust-b",
    )

    done = sharing.transfer_share(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        archive_for=world["archives"].__getitem__,
    )
    again = sharing.transfer_share(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        archive_for=world["archives"].__getitem__,
    )

    assert (done["status"], done["total"], done["copied"]) == ("COMPLETE", 3, 3)
    assert again == done
    copied = world["archives"]["trust-b"].search_instances(study)
    assert sorted(i["00080018"]["Value"][0] for i in copied) == sorted(sops)
    for sop in sops[:1]:
        series = copied[0]["0020000E"]["Value"][0]
        source = world["archives"]["trust-a"].retrieve_instance(study, series, sop)
        target = world["archives"]["trust-b"].retrieve_instance(study, series, sop)
        assert hashlib.sha256(source).digest() == hashlib.sha256(target).digest()


def test_share_to_research_stores_pseudonymised_copies(world):
    study, sops = archive_study(world, "CT_small.dcm", "CT_small.dcm")
    share = sharing.request_share(
        settings=world["settings"],
        state=world["state"],
        bus=world["bus"],
        archive_for=world["archives"].__getitem__,
        principal_tenant="trust-a",
        study_uid=study,
        from_tenant="trust-a",
        to_tenant="research",
    )

    done = sharing.transfer_share(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        archive_for=world["archives"].__getitem__,
    )

    assert (done["status"], done["copied"]) == ("COMPLETE", 2)
    assert world["archives"]["research"].search_studies(study) == []
    entry = next(iter(done["instances"].values()))
    research = world["archives"]["research"]
    held = research.search_instances(entry["dest_study_uid"])
    assert len(held) == 2
    assert {i["00080018"]["Value"][0] for i in held}.isdisjoint(sops)
    first = held[0]
    data = research.retrieve_instance(
        entry["dest_study_uid"],
        first["0020000E"]["Value"][0],
        first["00080018"]["Value"][0],
    )
    assert str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)).PatientName) != (
        "DOE^JANE"
    )


def test_share_of_study_missing_from_source_is_404(world):
    with pytest.raises(RequestRejected) as caught:
        sharing.request_share(
            settings=world["settings"],
            state=world["state"],
            bus=world["bus"],
            archive_for=world["archives"].__getitem__,
            principal_tenant="trust-a",
            study_uid=generate_uid(),
            from_tenant="trust-a",
            to_tenant="trust-b",
        )

    assert caught.value.status == 404


def test_share_to_research_fails_an_instance_whose_deid_leaks(world):
    study, _ = archive_study(
        world, "CT_small.dcm", "MR_small.dcm", leak_in="MR_small.dcm"
    )
    share = sharing.request_share(
        settings=world["settings"],
        state=world["state"],
        bus=world["bus"],
        archive_for=world["archives"].__getitem__,
        principal_tenant="trust-a",
        study_uid=study,
        from_tenant="trust-a",
        to_tenant="research",
    )

    done = sharing.transfer_share(
        share["id"],
        settings=world["settings"],
        state=world["state"],
        archive_for=world["archives"].__getitem__,
    )

    assert (done["status"], done["copied"], done["failed"]) == ("FAILED", 1, 1)
    reasons = [e.get("reason") for e in done["instances"].values()]
    assert "deid_leak" in reasons
