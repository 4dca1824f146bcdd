"""Synthetic identifiers planted where de-identifiers miss them: nested sequences,
private tags (one read back with VR UN), SR content items, directory-record-like
sequences, overlays, graphic annotations and multi-valued, multi-group names."""

from __future__ import annotations

import io

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

KEY = b"test-key-0123456789abcdef0123456789"
PLANTED = (
    b"DOE^JANE",
    b"TEST0001",
    b"ST ELSEWHERE TEST HOSPITAL",
    b"SMITH^JOHN",
    b"TESTLAND ROAD",
    b"19700101",
)


def planted_dataset() -> Dataset:
    """CT_small carrying the planted identifiers, round-tripped through bytes so
    that the private block written as implicit VR comes back with VR UN."""
    dataset = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "TEST0001"
    dataset.PatientBirthDate = "19700101"
    dataset.InstitutionName = "St Elsewhere Test Hospital"
    dataset.InstitutionAddress = "1 Testland Road"
    dataset.ReferringPhysicianName = "SMITH^JOHN"
    dataset.OtherPatientIDs = "TEST0001"
    dataset.PerformingPhysicianName = ["SMITH^JOHN", "DOE^JANE=DOE^JANE=DOE^JANE"]
    dataset.StudyDescription = "CT of DOE^JANE"
    dataset.BurnedInAnnotation = "NO"

    referenced = Dataset()
    referenced.ReferencedSOPClassUID = dataset.SOPClassUID
    referenced.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    referenced.PatientName = "DOE^JANE"  # misplaced on purpose: every level counts
    inner = Dataset()
    inner.InstitutionName = "St Elsewhere Test Hospital"
    inner.add_new(0x00291010, "LO", "TEST0001")  # private, two levels down
    referenced.ReferencedImageSequence = Sequence([inner])
    dataset.SourceImageSequence = Sequence([referenced])

    record = Dataset()  # a directory-record-like item in a private sequence
    record.DirectoryRecordType = "PATIENT"
    record.PatientName = "DOE^JANE"
    record.PatientID = "TEST0001"
    block = dataset.private_block(0x0011, "EXCHANGE TEST", create=True)
    block.add_new(0x01, "LO", "St Elsewhere Test Hospital")
    block.add_new(0x02, "PN", "DOE^JANE")
    block.add_new(0x03, "SQ", Sequence([record]))

    text = Dataset()  # SR content: a text item naming the patient
    text.ValueType = "TEXT"
    text.RelationshipType = "CONTAINS"
    text.TextValue = "Seen by SMITH^JOHN for DOE^JANE, ID TEST0001"
    person = Dataset()
    person.ValueType = "PNAME"
    person.PersonName = "SMITH^JOHN"
    dataset.ContentSequence = Sequence([text, person])

    graphic = Dataset()  # a graphic annotation with a text object
    label = Dataset()
    label.UnformattedTextValue = "DOE^JANE TEST0001"
    graphic.TextObjectSequence = Sequence([label])
    graphic.GraphicLayer = "LAYER1"
    dataset.GraphicAnnotationSequence = Sequence([graphic])

    dataset.add_new(0x60000022, "LO", "Overlay of DOE^JANE")  # Overlay Description
    dataset.add_new(0x60004000, "LT", "TEST0001")  # Overlay Comments

    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = dataset.StudyInstanceUID
    dataset.ReferencedStudySequence = Sequence([study])
    return _through_implicit_private(dataset)


def _through_implicit_private(dataset: Dataset) -> Dataset:
    """Write, then read with the private dictionary unknown: VR UN on the way in."""
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))
