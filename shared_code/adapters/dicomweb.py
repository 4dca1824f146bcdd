"""A tenant's DICOMweb archive (AHDS DICOM in Azure, Orthanc + DICOMweb locally).

QIDO-RS goes through dicomweb-client. STOW-RS and WADO-RS of one instance use the
same ``requests`` session directly, because dicomweb-client re-encodes datasets on
store and decodes them on retrieve; we move the Part 10 bytes unchanged, so that
the sha256 kept in the state store describes what the archive really holds.

STOW-RS outcomes (the FailureReason (0008,1197) of the Failed SOP Sequence
(0008,1198) in the response):

==========  ==============================================  ===========================
code        meaning                                         what we do
==========  ==============================================  ===========================
45070       AHDS: SOP Instance UID already stored (409)     ``already_present=True``
45071       AHDS: the instance is being stored by another   ``RetryLater``
272         0x0110 processing failure                       ``RetryLater``
42752       0xA700 out of resources                         ``RetryLater``
43264       0xA900 data set does not match SOP class /      ``stored=False`` (the use
            failed validation                               case quarantines)
43265       0xA901 (AHDS: Study UID does not match)         ``stored=False``
45063       AHDS: data set does not match SOP class         ``stored=False``
49152       0xC000 cannot understand                        ``stored=False``
290         0x0122 SOP class not supported                  ``stored=False``
other       anything else                                   ``stored=False``
==========  ==============================================  ===========================

Orthanc 1.10 with ``OverwriteInstances: false`` answers 200 to a second STOW of a SOP
Instance UID it holds (same object or a different one) and silently keeps its first
copy. Its answer cannot tell "stored" from "kept the old one", so before a STOW we ask
QIDO whether the instance is there (``precheck_existing``; AHDS does not need it,
its 409 says so). Two stores racing for one UID can both pass that check; the
archive use case's state record and its byte comparison are the guard for that.
"""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from shared_code.adapters.retry_after import retry_after_seconds
from shared_code.domain.dicom_events import parse_change_feed_entry
from shared_code.domain.redact import uid_hash
from shared_code.errors import Quarantine, RetryLater
from shared_code.ports import ArchiveChange, ChangePage, JsonDict, StoreOutcome

_log = logging.getLogger(__name__)
# An authorisation failure is an operator's to fix; look again after this long.
AUTH_RETRY_AFTER_SECONDS = 300.0
# dicomweb-client logs every search at INFO with whole Study/Series Instance UIDs;
# UIDs may only be logged hashed here, so only its warnings pass.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

AHDS_SCOPE = "https://dicom.healthcareapis.azure.com/.default"

STUDY_FIELDS = (
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "TimezoneOffsetFromUTC",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ModalitiesInStudy",
    "StudyID",
    "ReferringPhysicianName",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "RequestAttributesSequence",
    "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence",
)
SERIES_FIELDS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "Laterality",
    "SeriesDate",
    "SeriesTime",
    "NumberOfSeriesRelatedInstances",
    "PerformingPhysicianName",
)
INSTANCE_FIELDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "ContentLabel",
    "ConceptNameCodeSequence",
    "DocumentTitle",
)

# How far behind now the AHDS change feed is read (see _ahds_changes).
CHANGE_FEED_LAG = timedelta(minutes=2)

ALREADY_STORED = 45070
RETRYABLE_FAILURES = frozenset({272, 42752, 45071})

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def managed_identity_token_provider(client_id: str = "") -> Callable[[], str]:
    """Bearer tokens for AHDS DICOM from the Function App's managed identity.

    The credential caches tokens and renews them before they expire, so calling the
    provider for every request costs nothing most of the time.
    """
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ManagedIdentityCredential

    credential = (
        ManagedIdentityCredential(client_id=client_id)
        if client_id
        else ManagedIdentityCredential()
    )

    def token() -> str:
        try:
            return credential.get_token(AHDS_SCOPE).token
        except ClientAuthenticationError as exc:
            raise RetryLater(
                f"no token for the DICOM service: {type(exc).__name__}",
                retry_after=AUTH_RETRY_AFTER_SECONDS,
            ) from exc

    return token


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token_provider: Callable[[], str]) -> None:
        self._token_provider = token_provider

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token_provider()}"
        return request


class DicomWebArchive:
    """``ports.DicomArchive`` over DICOMweb (QIDO-RS, WADO-RS, STOW-RS)."""

    def __init__(
        self,
        dicomweb_root: str,
        *,
        username: str = "",
        password: str = "",
        token_provider: Callable[[], str] | None = None,
        session: requests.Session | None = None,
        timeout: float = 60,
        page_size: int = 200,
        precheck_existing: bool = True,
    ) -> None:
        self._root = dicomweb_root.rstrip("/")
        self._session = session or requests.Session()
        if token_provider is not None:
            self._session.auth = _BearerAuth(token_provider)
        elif username:
            self._session.auth = (username, password)
        self._timeout = timeout
        self._page_size = page_size
        self._precheck_existing = precheck_existing
        self._client = DICOMwebClient(
            url=self._root, session=self._session, timeout=timeout
        )
        # The bus retries a message with back-off; retrying inside the call as well
        # would hold the message lock for minutes.
        self._client.set_http_retry_params(retry=False)

    @property
    def dicomweb_root(self) -> str:
        return self._root

    # STOW-RS

    def store_instance(self, part10: bytes) -> StoreOutcome:
        study_uid, series_uid, sop_uid = _instance_uids(part10)
        if self._precheck_existing and self._instance_exists(
            study_uid, series_uid, sop_uid
        ):
            return StoreOutcome(sop_uid, stored=False, already_present=True)

        boundary = uuid.uuid4().hex
        body = b"".join(
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                part10,
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        content_type = (
            f'multipart/related; type="application/dicom"; boundary={boundary}'
        )
        with _translated("store"):
            response = self._session.post(
                f"{self._root}/studies",
                data=body,
                headers={
                    "Content-Type": content_type,
                    "Accept": "application/dicom+json",
                },
                timeout=self._timeout,
            )
        return _store_outcome(response, sop_uid)

    # QIDO-RS

    def search_studies(self, study_instance_uid: str | None = None) -> list[JsonDict]:
        filters = {"StudyInstanceUID": study_instance_uid} if study_instance_uid else {}
        return self._pages(
            self._client.search_for_studies, fields=STUDY_FIELDS, search_filters=filters
        )

    def search_series(self, study_instance_uid: str) -> list[JsonDict]:
        return self._pages(
            self._client.search_for_series,
            study_instance_uid=study_instance_uid,
            fields=SERIES_FIELDS,
        )

    def search_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[JsonDict]:
        return self._pages(
            self._client.search_for_instances,
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            fields=INSTANCE_FIELDS,
        )

    # WADO-RS

    def retrieve_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> bytes:
        url = (
            f"{self._root}/studies/{study_instance_uid}"
            f"/series/{series_instance_uid}/instances/{sop_instance_uid}"
        )
        # transfer-syntax=* asks for the stored bytes, not a transcoded copy.
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        with _translated("retrieve"):
            response = self._session.get(
                url, headers={"Accept": accept}, timeout=self._timeout
            )
            response.raise_for_status()
        return _single_part(response)

    # Change feed

    def read_changes(self, checkpoint: JsonDict | None, limit: int) -> ChangePage:
        """``ports.ChangeFeed``: AHDS's v2 change feed, or Orthanc's ``/changes``
        when the root is an Orthanc DICOMweb plugin's (``.../dicom-web``)."""
        if self._root.endswith("/dicom-web"):
            return self._orthanc_changes(checkpoint, limit)
        return self._ahds_changes(checkpoint, limit)

    def _ahds_changes(self, checkpoint: JsonDict | None, limit: int) -> ChangePage:
        """``GET {root}/changefeed?startTime&endTime&offset&limit`` (v2 API).

        The checkpoint is a window start and an offset into the entries from it.
        The window ends ``CHANGE_FEED_LAG`` behind now, so that entries committed
        late with an earlier timestamp are still ahead of us; once a window is read
        to its end, the next starts where it ended (endTime is exclusive).
        """
        start = str((checkpoint or {}).get("start") or "1970-01-01T00:00:00Z")
        offset = int((checkpoint or {}).get("offset") or 0)
        end = (datetime.now(UTC) - CHANGE_FEED_LAG).strftime("%Y-%m-%dT%H:%M:%SZ")
        if end <= start:
            return ChangePage([], {"start": start, "offset": offset}, done=True)
        limit = max(1, min(limit, 200))
        with _translated("changefeed"):
            response = self._session.get(
                f"{self._root}/changefeed",
                params={
                    "startTime": start,
                    "endTime": end,
                    "offset": str(offset),
                    "limit": str(limit),
                    "includeMetadata": "false",
                },
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            )
            response.raise_for_status()
        entries = response.json()
        changes = [parse_change_feed_entry(entry) for entry in entries]
        if len(entries) < limit:
            return ChangePage(changes, {"start": end, "offset": 0}, done=True)
        return ChangePage(
            changes, {"start": start, "offset": offset + len(entries)}, done=False
        )

    def _orthanc_changes(self, checkpoint: JsonDict | None, limit: int) -> ChangePage:
        """Orthanc's ``GET /changes?since&limit`` on its REST root.

        Only study-level entries (NewStudy, StableStudy, ...) are used: every new
        instance makes its study unstable and, after StableAge seconds, stable
        again, so they name every changed study at one lookup each, where the
        instance entries would cost one per instance. Orthanc logs no deletions.
        """
        since = int((checkpoint or {}).get("since") or 0)
        rest_root = self._root.removesuffix("/dicom-web")
        with _translated("changes"):
            response = self._session.get(
                f"{rest_root}/changes",
                params={"since": str(since), "limit": str(max(1, limit))},
                timeout=self._timeout,
            )
            response.raise_for_status()
        page = response.json()
        changes = []
        for change in page.get("Changes", []):
            if change.get("ResourceType") != "Study":
                continue
            study_uid = self._orthanc_study_uid(rest_root, str(change.get("ID")))
            if study_uid:
                changes.append(ArchiveChange(study_uid, "update", int(change["Seq"])))
        last = int(page.get("Last", since))
        return ChangePage(changes, {"since": last}, done=bool(page.get("Done", True)))

    def _orthanc_study_uid(self, rest_root: str, orthanc_id: str) -> str | None:
        with _translated("changes"):
            response = self._session.get(
                f"{rest_root}/studies/{orthanc_id}", timeout=self._timeout
            )
            if response.status_code == 404:
                return None  # deleted since: its instances' events say so
            response.raise_for_status()
        uid = response.json().get("MainDicomTags", {}).get("StudyInstanceUID")
        return str(uid) if uid else None

    # helpers

    def _instance_exists(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        with _translated("search"):
            found = self._client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                search_filters={"SOPInstanceUID": sop_uid},
                fields=("SOPInstanceUID",),
            )
        return any(_first(item, "00080018") == sop_uid for item in found)

    def _pages(self, search: Callable[..., list[JsonDict]], **kwargs: Any) -> list:
        """Every match, page by page: a server may cap one answer silently."""
        results: list[JsonDict] = []
        while True:
            with _translated("search"):
                page = search(limit=self._page_size, offset=len(results), **kwargs)
            results.extend(page)
            if len(page) < self._page_size:
                return results


def _instance_uids(part10: bytes) -> tuple[str, str, str]:
    try:
        dataset = pydicom.dcmread(
            io.BytesIO(part10),
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
        return (
            str(dataset.StudyInstanceUID),
            str(dataset.SeriesInstanceUID),
            str(dataset.SOPInstanceUID),
        )
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise Quarantine(
            "dicom_unreadable", f"cannot read the instance's UIDs: {exc}"
        ) from None


def _store_outcome(response: requests.Response, sop_uid: str) -> StoreOutcome:
    failure = _failure_reason(response, sop_uid)
    if response.status_code in (200, 202) and failure is None:
        return StoreOutcome(sop_uid, stored=True)
    if failure == ALREADY_STORED:
        return StoreOutcome(sop_uid, stored=False, already_present=True)
    if failure in RETRYABLE_FAILURES:
        raise RetryLater(
            f"STOW-RS failure reason {failure}",
            retry_after=_retry_after(response),
        )
    if failure is not None:
        _log.warning(
            "stow_failed",
            extra={"sop_uid_hash": uid_hash(sop_uid), "failure_reason": failure},
        )
        return StoreOutcome(sop_uid, stored=False, failure_reason=failure)
    _raise_for_status(response, "store")
    # A 4xx without a failure item for our instance (Orthanc answers 400 with an
    # empty sequence to bytes it cannot parse).
    raise Quarantine(
        "dicom_rejected", f"STOW-RS answered {response.status_code} without a reason"
    )


def _failure_reason(response: requests.Response, sop_uid: str) -> int | None:
    try:
        body = response.json() if response.content else {}
    except ValueError:
        return None
    if isinstance(body, list):
        body = body[0] if body else {}
    for item in body.get(_FAILED_SOP_SEQUENCE, {}).get("Value", []):
        if _first(item, _REFERENCED_SOP_INSTANCE_UID) in (sop_uid, None):
            reason = _first(item, _FAILURE_REASON)
            return int(reason) if reason is not None else 0
    return None


def _first(item: JsonDict, tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


def _single_part(response: requests.Response) -> bytes:
    """The one body part of a multipart/related answer, without decoding DICOM."""
    content_type = response.headers.get("Content-Type", "")
    media_type, *params = (p.strip() for p in content_type.split(";"))
    if media_type.lower() == "application/dicom":
        return response.content  # some servers send the part bare
    boundary = next(
        (
            value.strip('"')
            for name, _, value in (p.partition("=") for p in params)
            if name.lower() == "boundary"
        ),
        None,
    )
    if media_type.lower() != "multipart/related" or not boundary:
        raise RetryLater(f"WADO-RS answered unexpected Content-Type {content_type!r}")
    body = response.content
    marker = f"--{boundary}".encode()
    start = body.find(marker)
    headers_end = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + marker, headers_end)
    if start < 0 or headers_end < 0 or end < 0:
        raise RetryLater("WADO-RS answered a truncated multipart body")
    return body[headers_end + 4 : end]


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn ``requests`` errors into the errors our callers act on."""
    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise RetryLater(f"DICOMweb {action}: {type(exc).__name__}") from None
    except requests.HTTPError as exc:
        if exc.response is None:
            raise RetryLater(f"DICOMweb {action}: {exc}") from None
        _raise_for_status(exc.response, action)
        raise


def _raise_for_status(response: requests.Response, action: str) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in _RETRYABLE_STATUS or status >= 500:
        raise RetryLater(
            f"DICOMweb {action} answered {status}", retry_after=_retry_after(response)
        )
    if status == 404:
        raise Quarantine("dicom_not_found", f"DICOMweb {action} answered 404")
    if status in (401, 403):
        # Our credentials or role assignment are wrong (an expired token, a role still
        # propagating): the data is fine, so it must not go to quarantine. Retry long
        # after; if nobody fixes it, the message is dead-lettered with this reason.
        _log.error("dicomweb_unauthorised", extra={"action": action, "status": status})
        raise RetryLater(
            f"DICOMweb {action} answered {status}: check the credentials and roles",
            retry_after=AUTH_RETRY_AFTER_SECONDS,
        )
    if status == 413:
        raise Quarantine("dicom_too_large", f"DICOMweb {action} answered 413")
    raise Quarantine("dicom_rejected", f"DICOMweb {action} answered {status}")


def _retry_after(response: requests.Response) -> float | None:
    return retry_after_seconds(response.headers)
