"""The DICOM JSON → FHIR R4 mappers, on QIDO views built from pydicom's test files.

CT_small.dcm gives a CT series of two instances (the second a copy under a new SOP
Instance UID) and MR_small.dcm an MR series, moved into the CT's study. Patient
attributes are replaced with synthetic ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pydicom
import pytest
from fhir.resources.R4B.imagingstudy import ImagingStudy
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from shared_code.domain import fhir_mapping as fm
from shared_code.errors import Quarantine

PATIENT_SYSTEM = "https://fhir.nhs.uk/Id/local-patient-identifier"
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "TimezoneOffsetFromUTC",
    "AccessionNumber",
    "StudyDescription",
)
SERIES_KEYWORDS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription")
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
)

JsonDict = dict[str, Any]


def pydicom_file(name: str) -> Dataset:
    """One of pydicom's packaged test files."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom test file {name} is missing"
    return pydicom.dcmread(path)


def study_datasets() -> list[Dataset]:
    """One synthetic study: CT #2 and CT #1 (series 1), MR (series 2)."""
    ct = pydicom_file("CT_small.dcm")
    ct.PatientName = "DOE^JANE^ANN^DR^"
    ct.PatientID = "TEST0001"
    ct.PatientSex = "F"
    ct.PatientBirthDate = "19700101"
    ct.AccessionNumber = "ACC0001"
    ct.StudyDescription = "CT CHEST"
    ct.SeriesDescription = "AXIAL"

    ct_second = pydicom_file("CT_small.dcm")
    for keyword in (*STUDY_KEYWORDS, "SeriesDescription"):
        setattr(ct_second, keyword, ct[keyword].value)
    ct_second.SOPInstanceUID = generate_uid()
    ct_second.InstanceNumber = 2

    mr = pydicom_file("MR_small.dcm")
    for keyword in STUDY_KEYWORDS:
        setattr(mr, keyword, ct[keyword].value)
    mr.SeriesNumber = 2
    return [ct_second, ct, mr]


def dicom_json(ds: Dataset, keywords: Iterable[str]) -> JsonDict:
    """The DICOM JSON of the named attributes of ``ds``, as QIDO-RS returns them."""
    subset = Dataset()
    for keyword in keywords:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return subset.to_json_dict()


def qido_view(
    datasets: list[Dataset],
) -> tuple[JsonDict, list[JsonDict], dict[str, list[JsonDict]]]:
    """Study-level result, series-level results, instance results by series."""
    study = dicom_json(datasets[0], STUDY_KEYWORDS)
    series: dict[str, JsonDict] = {}
    instances: dict[str, list[JsonDict]] = {}
    for ds in datasets:
        series.setdefault(ds.SeriesInstanceUID, dicom_json(ds, SERIES_KEYWORDS))
        instances.setdefault(ds.SeriesInstanceUID, []).append(
            dicom_json(ds, INSTANCE_KEYWORDS)
        )
    return study, list(series.values()), instances


def imaging_study(datasets: list[Dataset] | None = None) -> JsonDict:
    study, series, instances = qido_view(datasets or study_datasets())
    return fm.build_imaging_study(study, series, instances, "Patient/p1", "Endpoint/e1")


# Patient


def test_given_a_study_when_building_patient_then_identity_is_mapped() -> None:
    study, _, _ = qido_view(study_datasets())

    patient = fm.build_patient(study, PATIENT_SYSTEM)

    assert patient == {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": "TEST0001"}],
        "name": [{"family": "DOE", "given": ["JANE", "ANN"], "prefix": ["DR"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }


@pytest.mark.parametrize(
    ("sex", "gender"), [("M", "male"), ("F", "female"), ("O", "other"), ("", None)]
)
def test_patient_gender_from_patient_sex(sex: str, gender: str | None) -> None:
    ds = pydicom_file("CT_small.dcm")
    ds.PatientSex = sex

    assert fm.patient_gender(dicom_json(ds, ["PatientSex"])) == gender


def test_given_a_partial_birth_date_then_patient_birth_date_is_partial() -> None:
    study_json, _, _ = qido_view(study_datasets())
    # Year and month only, as some de-identifying exports keep (not a valid DA,
    # so set in the archive's answer rather than through pydicom).
    study_json["00100030"]["Value"] = ["197001"]

    patient = fm.build_patient(study_json, PATIENT_SYSTEM)

    assert patient["birthDate"] == "1970-01"


def test_given_no_name_sex_or_birth_date_then_they_are_left_out() -> None:
    ds = study_datasets()[0]
    ds.PatientName = ""
    ds.PatientSex = ""
    ds.PatientBirthDate = ""

    patient = fm.build_patient(dicom_json(ds, STUDY_KEYWORDS), PATIENT_SYSTEM)

    assert set(patient) == {"resourceType", "identifier"}


def test_given_no_patient_id_then_the_study_is_quarantined() -> None:
    ds = study_datasets()[0]
    ds.PatientID = ""

    with pytest.raises(Quarantine) as caught:
        fm.build_patient(dicom_json(ds, STUDY_KEYWORDS), PATIENT_SYSTEM)

    assert caught.value.reason == "dicom_missing_patient_id"


# Endpoint


def test_endpoint_is_the_tenants_wado_rs_root() -> None:
    endpoint = fm.build_endpoint("http://127.0.0.1:18042/dicom-web", "trust-a")

    assert endpoint == {
        "resourceType": "Endpoint",
        "identifier": [{"system": "urn:dicom-exchange:endpoint", "value": "trust-a"}],
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": "http://127.0.0.1:18042/dicom-web",
    }


def test_given_a_value_fhir_cannot_hold_then_validation_quarantines_it() -> None:
    study_json, series, instances = qido_view(study_datasets())
    # An archive answering a malformed UID: ImagingStudy.series.uid is an FHIR id.
    old_uid = series[0]["0020000E"]["Value"][0]
    series[0]["0020000E"]["Value"] = ["1.2_3"]
    instances["1.2_3"] = instances.pop(old_uid)

    with pytest.raises(Quarantine) as caught:
        fm.build_imaging_study(study_json, series, instances, "Patient/p", "Endpoint/e")

    assert caught.value.reason == "fhir_mapping_invalid"
    assert "series.0.uid" in caught.value.detail


# ImagingStudy


def test_imaging_study_is_valid_r4b_and_names_its_study() -> None:
    datasets = study_datasets()

    study = imaging_study(datasets)

    ImagingStudy.model_validate(study)
    assert study["status"] == "available"
    assert study["subject"] == {"reference": "Patient/p1"}
    assert study["endpoint"] == [{"reference": "Endpoint/e1"}]
    assert study["description"] == "CT CHEST"
    assert study["identifier"][0] == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{datasets[0].StudyInstanceUID}",
    }


def test_given_an_accession_number_with_issuer_then_it_is_an_acsn_identifier() -> None:
    ds = study_datasets()[0]
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "RIS"
    issuer.UniversalEntityID = "2.16.840.1.113883.2.1.4.1"
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = [issuer]

    study_json = dicom_json(ds, (*STUDY_KEYWORDS, "IssuerOfAccessionNumberSequence"))

    assert fm.accession_identifier(study_json) == {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "ACSN",
                }
            ]
        },
        "value": "ACC0001",
        "system": "urn:oid:2.16.840.1.113883.2.1.4.1",
        "assigner": {"display": "RIS"},
    }


def test_given_no_accession_number_then_only_the_study_uid_identifies() -> None:
    ds = study_datasets()[0]
    ds.AccessionNumber = ""

    assert len(fm.study_identifiers(dicom_json(ds, STUDY_KEYWORDS))) == 1


def test_given_no_modalities_in_study_then_the_series_modalities_are_used() -> None:
    study = imaging_study()

    assert study["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"},
    ]


def test_given_modalities_in_study_then_they_are_used() -> None:
    ds = study_datasets()[0]
    ds.ModalitiesInStudy = ["CT", "SR"]

    study_json = dicom_json(ds, (*STUDY_KEYWORDS, "ModalitiesInStudy"))

    codes = [c["code"] for c in fm.study_modalities(study_json, [])]
    assert codes == ["CT", "SR"]


def test_given_a_timezone_offset_then_started_carries_it() -> None:
    study = imaging_study()  # CT_small: 20040119 072730, offset -0500

    assert study["started"] == "2004-01-19T07:27:30-05:00"


def test_given_no_timezone_offset_then_started_is_the_date_only() -> None:
    datasets = study_datasets()
    del datasets[0].TimezoneOffsetFromUTC

    assert imaging_study(datasets)["started"] == "2004-01-19"


def test_given_a_partial_study_date_then_started_is_partial() -> None:
    study_json, series, instances = qido_view(study_datasets())
    study_json["00080020"]["Value"] = ["200401"]

    study = fm.build_imaging_study(
        study_json, series, instances, "Patient/p", "Endpoint/e"
    )

    assert study["started"] == "2004-01"


def test_counts_and_uids_come_from_the_instance_lists() -> None:
    datasets = study_datasets()
    ct_second, ct, mr = datasets
    study_json, series, instances = qido_view(datasets)
    # An archive's own count may lag or be missing; it must not be used.
    study_json["00201208"] = {"vr": "IS", "Value": [99]}

    study = fm.build_imaging_study(
        study_json, series, instances, "Patient/p1", "Endpoint/e1"
    )

    assert study["numberOfSeries"] == 2
    assert study["numberOfInstances"] == 3
    ct_series, mr_series = study["series"]
    assert ct_series["uid"] == ct.SeriesInstanceUID
    assert ct_series["number"] == 1
    assert ct_series["modality"]["code"] == "CT"
    assert ct_series["description"] == "AXIAL"
    assert ct_series["numberOfInstances"] == 2
    assert [i["uid"] for i in ct_series["instance"]] == [
        ct.SOPInstanceUID,
        ct_second.SOPInstanceUID,
    ]
    assert [i["number"] for i in ct_series["instance"]] == [1, 2]
    assert ct_series["instance"][0]["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
    }
    assert mr_series["uid"] == mr.SeriesInstanceUID
    assert mr_series["numberOfInstances"] == 1
    assert "description" not in mr_series


def test_given_the_same_view_in_another_order_then_the_study_is_the_same() -> None:
    ct_second, ct, mr = study_datasets()

    assert imaging_study([ct_second, ct, mr]) == imaging_study([mr, ct, ct_second])


def test_given_a_series_without_instances_then_it_is_left_out() -> None:
    study_json, series, instances = qido_view(study_datasets())
    mr_uid = series[-1]["0020000E"]["Value"][0]
    instances[mr_uid] = []

    study = fm.build_imaging_study(
        study_json, series, instances, "Patient/p1", "Endpoint/e1"
    )

    assert study["numberOfSeries"] == 1
    assert [s["modality"]["code"] for s in study["series"]] == ["CT"]


def test_given_a_series_without_modality_then_the_study_is_quarantined() -> None:
    study_json, series, instances = qido_view(study_datasets())
    del series[0]["00080060"]

    with pytest.raises(Quarantine) as caught:
        fm.build_imaging_study(study_json, series, instances, "Patient/p", "Endpoint/e")

    assert caught.value.reason == "dicom_missing_modality"


# DICOM values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20040119", "2004-01-19"),
        ("200401", "2004-01"),
        ("2004", "2004"),
        ("2004.01.19", "2004-01-19"),  # ACR-NEMA style
        ("20041319", None),
        ("", None),
        (None, None),
        ("0000", None),
    ],
)
def test_fhir_date(value: str | None, expected: str | None) -> None:
    assert fm.fhir_date(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("072730", "07:27:30"),
        ("0727", "07:27:00"),
        ("07", "07:00:00"),
        ("072730.123456", "07:27:30.123456"),
        ("07:27:30", "07:27:30"),
        ("257730", None),
        ("7", None),
    ],
)
def test_fhir_time(value: str, expected: str | None) -> None:
    assert fm.fhir_time(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("+0100", "+01:00"), ("-0500", "-05:00"), ("0100", None), ("", None)],
)
def test_fhir_timezone(value: str, expected: str | None) -> None:
    assert fm.fhir_timezone(value) == expected


# The elements added for the complete R4 mapping


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        value,
        scheme,
        meaning,
    )
    return item


def full_study() -> tuple[JsonDict, list[JsonDict], dict[str, list[JsonDict]]]:
    """The study with every attribute the mapping reads."""
    datasets = study_datasets()
    for ds in datasets:
        ds.StudyID = "S42"
        ds.ReferringPhysicianName = "WHO^JOHN^^DR"
        ds.NameOfPhysiciansReadingStudy = ["READ^ANNA", "READ^BOB"]
        ds.ProcedureCodeSequence = [_code_item("RPID17", "RADLEX", "CT Chest")]
        ds.ReasonForRequestedProcedureCodeSequence = [
            _code_item("49727002", "SCT", "Cough")
        ]
        ds.BodyPartExamined = "CHEST"
        ds.Laterality = "R"
        ds.SeriesDate, ds.SeriesTime = "20040119", "073000"
        ds.PerformingPhysicianName = "DOE^JANE"
        ds.ContentLabel = "KEY IMAGE"
    study_keywords = (
        *STUDY_KEYWORDS,
        "StudyID",
        "ReferringPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "ProcedureCodeSequence",
        "ReasonForRequestedProcedureCodeSequence",
    )
    series_keywords = (
        *SERIES_KEYWORDS,
        "BodyPartExamined",
        "Laterality",
        "SeriesDate",
        "SeriesTime",
        "PerformingPhysicianName",
    )
    study = dicom_json(datasets[0], study_keywords)
    series: dict[str, JsonDict] = {}
    instances: dict[str, list[JsonDict]] = {}
    for ds in datasets:
        series.setdefault(ds.SeriesInstanceUID, dicom_json(ds, series_keywords))
        instances.setdefault(ds.SeriesInstanceUID, []).append(
            dicom_json(ds, (*INSTANCE_KEYWORDS, "ContentLabel"))
        )
    return study, list(series.values()), instances


def test_every_study_element_of_the_mapping_is_filled() -> None:
    study_json, series, instances = full_study()

    study = fm.build_imaging_study(
        study_json,
        series,
        instances,
        "Patient/p",
        "Endpoint/e",
        patient_identifier={"system": PATIENT_SYSTEM, "value": "TEST0001"},
        tenant="trust-a",
    )

    ImagingStudy.model_validate(study)
    assert study["meta"] == {
        "tag": [{"system": "urn:dicom-exchange:tenant", "code": "trust-a"}]
    }
    assert study["subject"]["identifier"]["value"] == "TEST0001"
    assert study["identifier"][-1]["value"] == "S42"
    assert study["basedOn"] == [
        {"type": "ServiceRequest", "identifier": fm.accession_identifier(study_json)}
    ]
    assert study["referrer"] == {"display": "DR JOHN WHO"}
    assert study["interpreter"] == [{"display": "ANNA READ"}, {"display": "BOB READ"}]
    assert study["procedureCode"] == [
        {
            "coding": [
                {"system": "http://radlex.org", "code": "RPID17", "display": "CT Chest"}
            ],
            "text": "CT Chest",
        }
    ]
    assert study["reasonCode"][0]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "49727002",
        "display": "Cough",
    }
    ct = study["series"][0]
    assert ct["bodySite"] == {
        "system": "http://snomed.info/sct",
        "code": "51185008",
        "display": "Chest",
    }
    assert ct["laterality"]["code"] == "24028007"
    assert ct["started"] == "2004-01-19T07:30:00-05:00"
    assert ct["performer"] == [{"actor": {"display": "JANE DOE"}}]
    assert ct["instance"][0]["title"] == "KEY IMAGE"


@pytest.mark.parametrize(
    ("term", "code"),
    [("CHEST", "51185008"), ("cspine", "122494005"), ("KIDNEYS?", None), ("", None)],
)
def test_body_site_only_for_terms_the_standard_maps(
    term: str, code: str | None
) -> None:
    series = {"00180015": {"vr": "CS", "Value": [term]}} if term else {}

    site = fm.series_body_site(series)

    assert (site or {}).get("code") == code


@pytest.mark.parametrize(
    ("value", "code"), [("R", "24028007"), ("L", "7771000"), ("B", "51440002")]
)
def test_laterality_as_snomed(value: str, code: str) -> None:
    laterality = fm.series_laterality({"00200060": {"vr": "CS", "Value": [value]}})

    assert laterality is not None and laterality["code"] == code


def test_unpaired_laterality_gives_nothing() -> None:
    assert fm.series_laterality({"00200060": {"vr": "CS", "Value": ["U"]}}) is None


def test_reason_text_from_the_request_attributes_sequence() -> None:
    request = Dataset()
    request.ReasonForTheRequestedProcedure = "Query fracture"
    ds = Dataset()
    ds.RequestAttributesSequence = [request]

    assert fm.study_reason_codes(ds.to_json_dict()) == [{"text": "Query fracture"}]


def test_instance_title_from_the_sr_concept_name() -> None:
    ds = Dataset()
    ds.ConceptNameCodeSequence = [_code_item("18748-4", "LN", "Diagnostic Imaging")]

    assert fm.instance_title(ds.to_json_dict()) == "Diagnostic Imaging"


@pytest.mark.parametrize(
    ("configured", "qualifier", "issuer", "expected"),
    [
        ("https://trust/Id", "2.16.840.1", "RIS", "https://trust/Id"),
        ("", "2.16.840.1", "RIS", "urn:oid:2.16.840.1"),
        ("", "", "PAS A", "urn:tenant:patient-id:PAS%20A"),
        ("", "", "", "urn:tenant:patient-id"),
    ],
)
def test_patient_identifier_system(
    configured: str, qualifier: str, issuer: str, expected: str
) -> None:
    ds = Dataset()
    if issuer:
        ds.IssuerOfPatientID = issuer
    if qualifier:
        item = Dataset()
        item.UniversalEntityID, item.UniversalEntityIDType = qualifier, "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [item]

    system = fm.patient_identifier_system(
        ds.to_json_dict(), configured, "urn:tenant:patient-id"
    )

    assert system == expected


def test_study_id_is_a_secondary_local_identifier() -> None:
    ds = Dataset()
    ds.StudyID = "S42"

    assert fm.study_id_identifier(ds.to_json_dict()) == {
        "use": "secondary",
        "type": {"text": "Study ID"},
        "system": "urn:dicom-exchange:study-id",
        "value": "S42",
    }
