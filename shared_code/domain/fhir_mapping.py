"""Mapping an archive's QIDO-RS view of a study to FHIR R4 Patient, Endpoint and
ImagingStudy, one small pure function per FHIR element.

Input is DICOM JSON (PS3.18 F.2) as QIDO-RS returns it: dicts keyed by 8-hex tags
("0020000D") holding ``vr`` and ``Value``. Output is FHIR R4 JSON, validated with
``fhir.resources.R4B`` before it is returned (fhir.resources 8 has R5 at its top
level and no R4 package; R4B's Patient, Endpoint and ImagingStudy have the same
elements as R4's).

Not mapped yet (a later issue; the ImagingStudy is a usable skeleton without them):
ImagingStudy.referrer (0008,0090), interpreter (0008,1060), basedOn / Requested
Procedure, procedureCode (0008,1032), reasonCode (0040,1002), location, encounter,
note, identifiers other than Study Instance UID and Accession Number (e.g. Study ID
(0020,0010)); series.bodySite (0018,0015), laterality (0020,0060), started
(0008,0021/0031), performer, endpoint; instance.title; Patient identifiers from
Other Patient IDs Sequence (0010,1002), Patient's Age, ideographic and phonetic
names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from shared_code.errors import Quarantine

_log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
DicomJson = Mapping[str, Any]

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
ENDPOINT_ID_SYSTEM = "urn:dicom-exchange:endpoint"
ENDPOINT_CONNECTION_SYSTEM = (
    "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
)
V2_0203_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"

# DICOM tags, by keyword.
STUDY_INSTANCE_UID = "0020000D"
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
TIMEZONE_OFFSET = "00080201"
ACCESSION_NUMBER = "00080050"
ISSUER_OF_ACCESSION_NUMBER = "00080051"
LOCAL_NAMESPACE_ENTITY_ID = "00400031"
UNIVERSAL_ENTITY_ID = "00400032"
UNIVERSAL_ENTITY_ID_TYPE = "00400033"
MODALITIES_IN_STUDY = "00080061"
STUDY_DESCRIPTION = "00081030"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
SERIES_INSTANCE_UID = "0020000E"
SERIES_NUMBER = "00200011"
MODALITY = "00080060"
SERIES_DESCRIPTION = "0008103E"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
INSTANCE_NUMBER = "00200013"

_GENDERS = {"M": "male", "F": "female", "O": "other"}


# Patient


def build_patient(study_json: DicomJson, identifier_system: str) -> JsonDict:
    """Patient from the patient attributes of a study-level QIDO result.

    No Patient ID (it is Type 2): ``Quarantine('dicom_missing_patient_id')``, as the
    Patient could not be found again and ImagingStudy.subject is required.
    """
    patient: JsonDict = {
        "resourceType": "Patient",
        "identifier": [patient_identifier(study_json, identifier_system)],
    }
    name = patient_name(study_json)
    if name:
        patient["name"] = [name]
    gender = patient_gender(study_json)
    if gender:
        patient["gender"] = gender
    birth_date = fhir_date(first_value(study_json, PATIENT_BIRTH_DATE))
    if birth_date:
        patient["birthDate"] = birth_date
    return _validated(Patient, patient)


def patient_identifier(study_json: DicomJson, system: str) -> JsonDict:
    """Patient.identifier from Patient ID (0010,0020) in the tenant's system."""
    value = text_value(study_json, PATIENT_ID)
    if not value:
        raise Quarantine(
            "dicom_missing_patient_id", "the study has no Patient ID (0010,0020)"
        )
    return {"system": system, "value": value}


def patient_name(study_json: DicomJson) -> JsonDict | None:
    """Patient.name from the alphabetic group of Patient's Name (0010,0010).

    PN components are family^given^middle^prefix^suffix (PS3.5 6.2).
    """
    person_name = first_value(study_json, PATIENT_NAME)
    alphabetic = (
        person_name.get("Alphabetic", "") if isinstance(person_name, Mapping) else ""
    )
    parts = [part.strip() for part in str(alphabetic).split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: JsonDict = {}
    if family:
        name["family"] = family
    given_names = [part for part in (given, *middle.split()) if part]
    if given_names:
        name["given"] = given_names
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name or None


def patient_gender(study_json: DicomJson) -> str | None:
    """Patient.gender from Patient's Sex (0010,0040); empty or unknown: omitted."""
    return _GENDERS.get(text_value(study_json, PATIENT_SEX).upper())


# Endpoint


def build_endpoint(dicomweb_root: str, tenant: str) -> JsonDict:
    """The DICOMweb (WADO-RS) Endpoint of a tenant's archive."""
    endpoint = {
        "resourceType": "Endpoint",
        "identifier": [{"system": ENDPOINT_ID_SYSTEM, "value": tenant}],
        "status": "active",
        "connectionType": {
            "system": ENDPOINT_CONNECTION_SYSTEM,
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM"}],
        "address": dicomweb_root,
    }
    return _validated(Endpoint, endpoint)


# ImagingStudy


def build_imaging_study(
    study_json: DicomJson,
    series_list: Sequence[DicomJson],
    instances_by_series: Mapping[str, Sequence[DicomJson]],
    patient_ref: str,
    endpoint_ref: str,
) -> JsonDict:
    """ImagingStudy from the study, series and instance level QIDO results.

    Counts come from the instance lists, not from Number of Study/Series Related
    Instances, which an archive may leave out or compute later. Series without
    instances (deleted between two QIDO calls) are left out. Series and instances
    are sorted by number then UID so that the same archive state always gives the
    same resource.
    """
    series = imaging_series(series_list, instances_by_series)
    study: JsonDict = {
        "resourceType": "ImagingStudy",
        "identifier": study_identifiers(study_json),
        "status": "available",
        "subject": {"reference": patient_ref},
        "endpoint": [{"reference": endpoint_ref}],
        "numberOfSeries": len(series),
        "numberOfInstances": sum(item["numberOfInstances"] for item in series),
        "series": series,
    }
    modalities = study_modalities(study_json, series_list)
    if modalities:
        study["modality"] = modalities
    started = study_started(study_json)
    if started:
        study["started"] = started
    description = text_value(study_json, STUDY_DESCRIPTION)
    if description:
        study["description"] = description
    if not series:
        del study["series"]
    return _validated(ImagingStudy, study)


def study_identifiers(study_json: DicomJson) -> list[JsonDict]:
    """ImagingStudy.identifier: Study Instance UID, and Accession Number if any."""
    identifiers = [study_uid_identifier(study_instance_uid(study_json))]
    accession = accession_identifier(study_json)
    if accession:
        identifiers.append(accession)
    return identifiers


def study_uid_identifier(study_uid: str) -> JsonDict:
    """The identifier ImagingStudy is found by: ``urn:dicom:uid|urn:oid:<uid>``."""
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}


def study_instance_uid(study_json: DicomJson) -> str:
    uid = text_value(study_json, STUDY_INSTANCE_UID)
    if not uid:
        raise Quarantine(
            "dicom_missing_uid", "the study has no Study Instance UID (0020,000D)"
        )
    return uid


def accession_identifier(study_json: DicomJson) -> JsonDict | None:
    """Accession Number (0008,0050) typed ACSN, with its issuer (0008,0051).

    A Universal Entity ID of type ISO, UUID or URI becomes the system; a Local
    Namespace Entity ID, which is no URI, names the assigner.
    """
    value = text_value(study_json, ACCESSION_NUMBER)
    if not value:
        return None
    identifier: JsonDict = {
        "type": {"coding": [{"system": V2_0203_SYSTEM, "code": "ACSN"}]},
        "value": value,
    }
    issuer = first_value(study_json, ISSUER_OF_ACCESSION_NUMBER)
    if isinstance(issuer, Mapping):
        system = _issuer_system(issuer)
        if system:
            identifier["system"] = system
        local = text_value(issuer, LOCAL_NAMESPACE_ENTITY_ID)
        if local:
            identifier["assigner"] = {"display": local}
    return identifier


def study_modalities(
    study_json: DicomJson, series_list: Sequence[DicomJson]
) -> list[JsonDict]:
    """ImagingStudy.modality: Modalities in Study, else the series' modalities."""
    codes = all_values(study_json, MODALITIES_IN_STUDY)
    if not codes:
        codes = [text_value(series, MODALITY) for series in series_list]
    return [_modality_coding(code) for code in sorted(set(filter(None, codes)))]


def study_started(study_json: DicomJson) -> str | None:
    """ImagingStudy.started from Study Date, Study Time and Timezone Offset From UTC.

    FHIR requires a zone on a dateTime with a time; without (0008,0201) the local
    time of the modality cannot be placed, so only the date is kept.
    """
    date = fhir_date(first_value(study_json, STUDY_DATE))
    if not date:
        return None
    time = fhir_time(first_value(study_json, STUDY_TIME))
    offset = fhir_timezone(first_value(study_json, TIMEZONE_OFFSET))
    if len(date) < len("YYYY-MM-DD") or not time or not offset:
        return date
    return f"{date}T{time}{offset}"


def imaging_series(
    series_list: Sequence[DicomJson],
    instances_by_series: Mapping[str, Sequence[DicomJson]],
) -> list[JsonDict]:
    """ImagingStudy.series, one per series that still has instances."""
    result = []
    for series_json in series_list:
        uid = text_value(series_json, SERIES_INSTANCE_UID)
        instances = instances_by_series.get(uid, ())
        if uid and instances:
            result.append(imaging_series_item(series_json, instances))
    return sorted(result, key=lambda item: (item.get("number", -1), item["uid"]))


def imaging_series_item(
    series_json: DicomJson, instances: Iterable[DicomJson]
) -> JsonDict:
    """One ImagingStudy.series with its instances."""
    uid = text_value(series_json, SERIES_INSTANCE_UID)
    modality = text_value(series_json, MODALITY)
    if not modality:
        raise Quarantine(
            "dicom_missing_modality", "a series has no Modality (0008,0060)"
        )
    items = sorted(
        (imaging_instance(instance) for instance in instances),
        key=lambda item: (item.get("number", -1), item["uid"]),
    )
    series: JsonDict = {"uid": uid}
    number = int_value(series_json, SERIES_NUMBER)
    if number is not None:
        series["number"] = number
    series["modality"] = _modality_coding(modality)
    description = text_value(series_json, SERIES_DESCRIPTION)
    if description:
        series["description"] = description
    series["numberOfInstances"] = len(items)
    series["instance"] = items
    return series


def imaging_instance(instance_json: DicomJson) -> JsonDict:
    """One ImagingStudy.series.instance: SOP Instance UID, SOP Class, number."""
    uid = text_value(instance_json, SOP_INSTANCE_UID)
    sop_class = text_value(instance_json, SOP_CLASS_UID)
    if not uid or not sop_class:
        raise Quarantine(
            "dicom_missing_uid",
            "an instance lacks SOP Instance UID (0008,0018) or SOP Class UID "
            "(0008,0016)",
        )
    instance: JsonDict = {
        "uid": uid,
        "sopClass": {"system": SOP_CLASS_SYSTEM, "code": f"urn:oid:{sop_class}"},
    }
    number = int_value(instance_json, INSTANCE_NUMBER)
    if number is not None:
        instance["number"] = number
    return instance


# DICOM values


def fhir_date(value: Any) -> str | None:
    """A FHIR date from a DA value; YYYY and YYYYMM (seen in de-identified and
    legacy data) give partial dates. Anything else: None."""
    text = str(value or "").strip().replace("-", "").replace(".", "")
    if not text.isdigit() or len(text) not in (4, 6, 8):
        return None
    year, month, day = text[:4], text[4:6], text[6:8]
    if year == "0000" or (month and not 1 <= int(month) <= 12):
        return None
    if day and not 1 <= int(day) <= 31:
        return None
    return "-".join(part for part in (year, month, day) if part)


def fhir_time(value: Any) -> str | None:
    """hh:mm:ss[.f] from a TM value (HH, HHMM, HHMMSS, HHMMSS.FFFFFF)."""
    text = str(value or "").strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return None
    hours, minutes, seconds = whole[:2], whole[2:4] or "00", whole[4:6] or "00"
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 60:
        return None
    time = f"{hours}:{minutes}:{seconds}"
    if fraction.isdigit():
        time += f".{fraction}"
    return time


def fhir_timezone(value: Any) -> str | None:
    """+hh:mm from a Timezone Offset From UTC (0008,0201) value like ``+0100``."""
    text = str(value or "").strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    return f"{text[:3]}:{text[3:]}"


def all_values(dataset: DicomJson, tag: str) -> list[Any]:
    element = dataset.get(tag)
    if not isinstance(element, Mapping):
        return []
    values = element.get("Value")
    return list(values) if isinstance(values, list) else []


def first_value(dataset: DicomJson, tag: str) -> Any:
    values = all_values(dataset, tag)
    return values[0] if values else None


def text_value(dataset: DicomJson, tag: str) -> str:
    value = first_value(dataset, tag)
    return "" if value is None else str(value).strip()


def int_value(dataset: DicomJson, tag: str) -> int | None:
    value = first_value(dataset, tag)
    try:
        # IS values come as JSON numbers, but some archives send strings.
        return None if value is None else int(str(value).strip())
    except ValueError:
        return None


def _modality_coding(code: str) -> JsonDict:
    return {"system": DCM_SYSTEM, "code": code}


def _issuer_system(issuer: DicomJson) -> str | None:
    entity_id = text_value(issuer, UNIVERSAL_ENTITY_ID)
    entity_type = text_value(issuer, UNIVERSAL_ENTITY_ID_TYPE).upper()
    if not entity_id:
        return None
    if entity_type == "ISO":
        return f"urn:oid:{entity_id}"
    if entity_type == "UUID":
        return f"urn:uuid:{entity_id.lower()}"
    if entity_type in ("URI", "URL"):
        return entity_id
    return None


def _validated(model: Any, resource: JsonDict) -> JsonDict:
    """``resource`` unchanged once it passes R4B validation; otherwise the mapping
    made something FHIR cannot hold and the study is set aside."""
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise Quarantine(
            "fhir_mapping_invalid", f"{resource['resourceType']}: {problems[:500]}"
        ) from None
    return resource
