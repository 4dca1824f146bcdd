"""Mapping an archive's QIDO-RS view of a study to FHIR R4 Patient, Endpoint and
ImagingStudy, one small pure function per FHIR element.

Input is DICOM JSON (PS3.18 F.2) as QIDO-RS returns it: dicts keyed by 8-hex tags
("0020000D") holding ``vr`` and ``Value``. Output is FHIR R4 JSON, validated with
``fhir.resources.R4B`` before it is returned (fhir.resources 8 has R5 at its top
level and no R4 package; R4B's Patient, Endpoint and ImagingStudy have the same
elements as R4's).

People (referrer, interpreter, series performer) are references by display only:
DICOM holds their names, not identifiers a Practitioner could be found by. The
elements left out, and why, are listed in README.md ("FHIR mapping: not filled").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from shared_code.domain.snomed_body_parts import BODY_PARTS, LATERALITY, SNOMED_CT
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
TENANT_TAG_SYSTEM = "urn:dicom-exchange:tenant"
STUDY_ID_SYSTEM = "urn:dicom-exchange:study-id"
# Coding Scheme Designators (0008,0102) with a FHIR system (PS3.16 Section 8).
_CODING_SCHEMES = {
    "DCM": DCM_SYSTEM,
    "SCT": SNOMED_CT,
    "LN": "http://loinc.org",
    "RADLEX": "http://radlex.org",
    "UCUM": "http://unitsofmeasure.org",
}

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
ISSUER_OF_PATIENT_ID = "00100021"
ISSUER_OF_PATIENT_ID_QUALIFIERS = "00100024"
STUDY_ID = "00200010"
REFERRING_PHYSICIAN_NAME = "00080090"
NAME_OF_PHYSICIANS_READING_STUDY = "00081060"
PROCEDURE_CODE_SEQUENCE = "00081032"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"
REASON_FOR_REQUESTED_PROCEDURE = "00401002"
REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE = "0040100A"
BODY_PART_EXAMINED = "00180015"
LATERALITY_TAG = "00200060"
SERIES_DATE = "00080021"
SERIES_TIME = "00080031"
PERFORMING_PHYSICIAN_NAME = "00081050"
CONTENT_LABEL = "00700080"
CONCEPT_NAME_CODE_SEQUENCE = "0040A043"
DOCUMENT_TITLE = "00420010"
CODE_VALUE = "00080100"
CODING_SCHEME_DESIGNATOR = "00080102"
CODE_MEANING = "00080104"
LONG_CODE_VALUE = "00080119"
URN_CODE_VALUE = "00080120"
SERIES_INSTANCE_UID = "0020000E"
SERIES_NUMBER = "00200011"
MODALITY = "00080060"
SERIES_DESCRIPTION = "0008103E"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
INSTANCE_NUMBER = "00200013"

_GENDERS = {"M": "male", "F": "female", "O": "other"}


# Patient


def build_patient(
    study_json: DicomJson, identifier_system: str, tenant: str = ""
) -> JsonDict:
    """Patient from the patient attributes of a study-level QIDO result.

    No Patient ID (it is Type 2): ``Quarantine('dicom_missing_patient_id')``, as the
    Patient could not be found again and ImagingStudy.subject is required.
    """
    patient: JsonDict = {"resourceType": "Patient"}
    if tenant:
        patient["meta"] = tenant_meta(tenant)
    patient["identifier"] = [patient_identifier(study_json, identifier_system)]
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


def patient_identifier_system(
    study_json: DicomJson, configured: str, fallback: str
) -> str:
    """The system of Patient.identifier: the tenant's configured one; else the
    Universal Entity ID of the Issuer of Patient ID Qualifiers (0010,0024); else
    ``fallback``, a URN scoped to the tenant.

    Issuer of Patient ID (0010,0021) alone is a local namespace name, not a URI,
    so it only refines the tenant's fallback URN.
    """
    if configured:
        return configured
    qualifiers = first_value(study_json, ISSUER_OF_PATIENT_ID_QUALIFIERS)
    if isinstance(qualifiers, Mapping):
        system = _issuer_system(qualifiers)
        if system:
            return system
    issuer = text_value(study_json, ISSUER_OF_PATIENT_ID)
    if issuer:
        return f"{fallback}:{quote(issuer, safe='')}"
    return fallback


def tenant_meta(tenant: str) -> JsonDict:
    """meta.tag naming the tenant: searches carry it, so that on a FHIR service two
    tenants share, one tenant's Patient is never linked to another's study."""
    return {"tag": [{"system": TENANT_TAG_SYSTEM, "code": tenant}]}


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
    *,
    patient_identifier: JsonDict | None = None,
    tenant: str = "",
) -> JsonDict:
    """ImagingStudy from the study, series and instance level QIDO results.

    Counts come from the instance lists, not from Number of Study/Series Related
    Instances, which an archive may leave out or compute later. Series without
    instances (deleted between two QIDO calls) are left out. Series and instances
    are sorted by number then UID so that the same archive state always gives the
    same resource. ``patient_identifier`` goes on subject beside the reference, so
    that a changed Patient ID shows as a changed ImagingStudy.
    """
    timezone = fhir_timezone(first_value(study_json, TIMEZONE_OFFSET))
    series = imaging_series(series_list, instances_by_series, timezone)
    subject: JsonDict = {"reference": patient_ref}
    if patient_identifier:
        subject["identifier"] = patient_identifier
    study: JsonDict = {"resourceType": "ImagingStudy"}
    if tenant:
        study["meta"] = tenant_meta(tenant)
    study.update(
        identifier=study_identifiers(study_json),
        status="available",
        subject=subject,
        endpoint=[{"reference": endpoint_ref}],
        numberOfSeries=len(series),
        numberOfInstances=sum(item["numberOfInstances"] for item in series),
        series=series,
    )
    optional = {
        "modality": study_modalities(study_json, series_list),
        "started": study_started(study_json),
        "basedOn": study_based_on(study_json),
        "referrer": study_referrer(study_json),
        "interpreter": study_interpreters(study_json),
        "procedureCode": study_procedure_codes(study_json),
        "reasonCode": study_reason_codes(study_json),
        "description": text_value(study_json, STUDY_DESCRIPTION),
    }
    study.update((name, value) for name, value in optional.items() if value)
    if not series:
        del study["series"]
    return _validated(ImagingStudy, study)


def study_identifiers(study_json: DicomJson) -> list[JsonDict]:
    """ImagingStudy.identifier: Study Instance UID, Accession Number and Study ID."""
    identifiers = [study_uid_identifier(study_instance_uid(study_json))]
    accession = accession_identifier(study_json)
    if accession:
        identifiers.append(accession)
    study_id = study_id_identifier(study_json)
    if study_id:
        identifiers.append(study_id)
    return identifiers


def study_id_identifier(study_json: DicomJson) -> JsonDict | None:
    """Study ID (0020,0010): the modality's own number, unique only locally, so it
    is typed and in a system of ours rather than passed off as a global one."""
    value = text_value(study_json, STUDY_ID)
    if not value:
        return None
    return {
        "use": "secondary",
        "type": {"text": "Study ID"},
        "system": STUDY_ID_SYSTEM,
        "value": value,
    }


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


def study_based_on(study_json: DicomJson) -> list[JsonDict]:
    """ImagingStudy.basedOn: the ServiceRequest (the order) by its accession
    identifier, a logical reference that resolves once the RIS has written it."""
    accession = accession_identifier(study_json)
    if accession is None:
        return []
    return [{"type": "ServiceRequest", "identifier": accession}]


def study_referrer(study_json: DicomJson) -> JsonDict | None:
    """ImagingStudy.referrer from Referring Physician's Name (0008,0090)."""
    names = person_displays(study_json, REFERRING_PHYSICIAN_NAME)
    return {"display": names[0]} if names else None


def study_interpreters(study_json: DicomJson) -> list[JsonDict]:
    """ImagingStudy.interpreter from Name of Physician(s) Reading Study (0008,1060)."""
    return [
        {"display": name}
        for name in person_displays(study_json, NAME_OF_PHYSICIANS_READING_STUDY)
    ]


def study_procedure_codes(study_json: DicomJson) -> list[JsonDict]:
    """ImagingStudy.procedureCode from Procedure Code Sequence (0008,1032)."""
    return [
        concept
        for item in all_values(study_json, PROCEDURE_CODE_SEQUENCE)
        if (concept := codeable_concept(item))
    ]


def study_reason_codes(study_json: DicomJson) -> list[JsonDict]:
    """ImagingStudy.reasonCode from the Reason for Requested Procedure Code Sequence
    (0040,100A), else its text (0040,1002); at the top level of the study's view
    or in the first item of the Request Attributes Sequence (0040,0275)."""
    sources = [study_json]
    request = first_value(study_json, REQUEST_ATTRIBUTES_SEQUENCE)
    if isinstance(request, Mapping):
        sources.append(request)
    for source in sources:
        coded = [
            concept
            for item in all_values(source, REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE)
            if (concept := codeable_concept(item))
        ]
        if coded:
            return coded
        text = text_value(source, REASON_FOR_REQUESTED_PROCEDURE)
        if text:
            return [{"text": text}]
    return []


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
    return _date_time(
        first_value(study_json, STUDY_DATE),
        first_value(study_json, STUDY_TIME),
        fhir_timezone(first_value(study_json, TIMEZONE_OFFSET)),
    )


def imaging_series(
    series_list: Sequence[DicomJson],
    instances_by_series: Mapping[str, Sequence[DicomJson]],
    timezone: str | None = None,
) -> list[JsonDict]:
    """ImagingStudy.series, one per series that still has instances."""
    result = []
    for series_json in series_list:
        uid = text_value(series_json, SERIES_INSTANCE_UID)
        instances = instances_by_series.get(uid, ())
        if uid and instances:
            result.append(imaging_series_item(series_json, instances, timezone))
    return sorted(result, key=lambda item: (item.get("number", -1), item["uid"]))


def imaging_series_item(
    series_json: DicomJson,
    instances: Iterable[DicomJson],
    timezone: str | None = None,
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
    optional = {
        "description": text_value(series_json, SERIES_DESCRIPTION),
        "numberOfInstances": len(items),
        "bodySite": series_body_site(series_json),
        "laterality": series_laterality(series_json),
        "started": series_started(series_json, timezone),
        "performer": series_performers(series_json),
    }
    series.update((name, value) for name, value in optional.items() if value)
    series["numberOfInstances"] = len(items)
    series["instance"] = items
    return series


def series_body_site(series_json: DicomJson) -> JsonDict | None:
    """series.bodySite: Body Part Examined (0018,0015) as SNOMED CT where PS3.16
    Annex L maps the defined term; other values give nothing."""
    term = text_value(series_json, BODY_PART_EXAMINED).upper().replace(" ", "")
    if term not in BODY_PARTS:
        return None
    code, display = BODY_PARTS[term]
    return {"system": SNOMED_CT, "code": code, "display": display}


def series_laterality(series_json: DicomJson) -> JsonDict | None:
    """series.laterality: Laterality (0020,0060) R, L or B as SNOMED CT."""
    value = text_value(series_json, LATERALITY_TAG).upper()
    if value not in LATERALITY:
        return None
    code, display = LATERALITY[value]
    return {"system": SNOMED_CT, "code": code, "display": display}


def series_started(series_json: DicomJson, timezone: str | None) -> str | None:
    """series.started from Series Date and Time (0008,0021/0031) and the study's
    Timezone Offset From UTC, under the same rule as ImagingStudy.started."""
    return _date_time(
        first_value(series_json, SERIES_DATE),
        first_value(series_json, SERIES_TIME),
        timezone,
    )


def series_performers(series_json: DicomJson) -> list[JsonDict]:
    """series.performer from Performing Physician's Name (0008,1050)."""
    return [
        {"actor": {"display": name}}
        for name in person_displays(series_json, PERFORMING_PHYSICIAN_NAME)
    ]


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
    title = instance_title(instance_json)
    if title:
        instance["title"] = title
    return instance


def instance_title(instance_json: DicomJson) -> str | None:
    """instance.title: Content Label (0070,0080), the meaning of the Concept Name
    Code Sequence (0040,A043) of an SR or KOS, or Document Title (0042,0010)."""
    label = text_value(instance_json, CONTENT_LABEL)
    if label:
        return label
    concept = first_value(instance_json, CONCEPT_NAME_CODE_SEQUENCE)
    if isinstance(concept, Mapping) and text_value(concept, CODE_MEANING):
        return text_value(concept, CODE_MEANING)
    return text_value(instance_json, DOCUMENT_TITLE) or None


# Codes and people


def codeable_concept(item: Any) -> JsonDict | None:
    """A CodeableConcept from a Code Sequence item (PS3.3 Table 8.8-1a)."""
    if not isinstance(item, Mapping):
        return None
    code = (
        text_value(item, CODE_VALUE)
        or text_value(item, LONG_CODE_VALUE)
        or text_value(item, URN_CODE_VALUE)
    )
    meaning = text_value(item, CODE_MEANING)
    scheme = text_value(item, CODING_SCHEME_DESIGNATOR).upper()
    if not code:
        return {"text": meaning} if meaning else None
    coding: JsonDict = {}
    system = _CODING_SCHEMES.get(scheme)
    if system:
        coding["system"] = system
    coding["code"] = code
    if meaning:
        coding["display"] = meaning
    concept: JsonDict = {"coding": [coding]}
    if meaning:
        concept["text"] = meaning
    return concept


def person_displays(dataset: DicomJson, tag: str) -> list[str]:
    """Readable names ("given family") from a (multi-valued) PN attribute."""
    names = []
    for value in all_values(dataset, tag):
        alphabetic = value.get("Alphabetic", "") if isinstance(value, Mapping) else ""
        parts = [part.strip() for part in str(alphabetic).split("^")] + [""] * 5
        family, given, middle, prefix, suffix = parts[:5]
        name = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
        if name:
            names.append(name)
    return names


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


def _date_time(date_value: Any, time_value: Any, offset: str | None) -> str | None:
    date = fhir_date(date_value)
    if not date:
        return None
    time = fhir_time(time_value)
    if len(date) < len("YYYY-MM-DD") or not time or not offset:
        return date
    return f"{date}T{time}{offset}"


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
