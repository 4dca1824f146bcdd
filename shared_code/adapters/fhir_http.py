"""The FHIR store port over the FHIR REST API with ``requests``: AHDS FHIR in Azure
(bearer tokens from a managed identity) and a local R4 server without auth.

HTTP failures become ``shared_code.errors`` here, so the use cases never see
``requests`` exceptions or status codes. Transient ones (connection errors, 409,
429, 5xx) are retried a few times with exponential back-off, waiting what
Retry-After asks; when the server asks for longer than ``max_wait`` the call gives
up at once with ``RetryLater(retry_after=...)`` and the bus redelivers the message
later, instead of a worker holding its message lock while it sleeps. A 412 on a
write with If-Match is ``PreconditionFailed``: the caller re-reads and rebuilds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urljoin

import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from shared_code.adapters.retry_after import retry_after_seconds
from shared_code.errors import PreconditionFailed, Quarantine, RetryLater
from shared_code.ports import JsonDict

_log = logging.getLogger(__name__)

# An authorisation failure is an operator's to fix; look again after this long.
AUTH_RETRY_AFTER_SECONDS = 300.0

FHIR_JSON = "application/fhir+json"
# Bundle pages followed by one search; a server looping on its next link is a bug
# we stop on rather than follow forever.
_MAX_PAGES = 1000
_MAX_DETAIL = 300


class FhirHttpStore:
    """One tenant's FHIR R4 service, reached over HTTP."""

    def __init__(
        self,
        base_url: str,
        session: requests.Session | None = None,
        token_provider: Callable[[], str] | None = None,
        timeout: float = 30,
        attempts: int = 4,
        max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = session or requests.Session()
        self._token_provider = token_provider
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._max_wait = max_wait
        self._sleep = sleep
        self._backoff = wait_exponential(multiplier=0.5, max=max_wait)

    @property
    def base_url(self) -> str:
        return self._base_url

    def read(self, resource_type: str, resource_id: str) -> JsonDict | None:
        """The current version; ``None`` when it does not exist or was deleted."""
        response = self._send(
            "GET", f"{self._base_url}/{resource_type}/{resource_id}", missing_ok=True
        )
        if response.status_code in (404, 410):
            return None
        return _json(response)

    def search(self, resource_type: str, params: Mapping[str, str]) -> list[JsonDict]:
        """Every matching resource, following the Bundle's ``next`` links."""
        resources: list[JsonDict] = []
        url: str | None = f"{self._base_url}/{resource_type}"
        query: Mapping[str, str] | None = params
        seen: set[str] = set()
        while url and len(seen) < _MAX_PAGES:
            seen.add(url)
            bundle = _json(self._send("GET", url, params=query))
            for entry in bundle.get("entry", []):
                # _include'd resources are not matches.
                if entry.get("search", {}).get("mode", "match") == "match":
                    resources.append(entry["resource"])
            url = _next_link(bundle)
            query = None  # the next link carries the query
            if url in seen:
                break
        return resources

    def conditional_create(self, resource: JsonDict, if_none_exist: str) -> JsonDict:
        """POST with If-None-Exist: the new resource (201) or the one match (200)."""
        response = self._send(
            "POST",
            f"{self._base_url}/{resource['resourceType']}",
            json_body=resource,
            headers={"If-None-Exist": if_none_exist},
        )
        return self._resource_from(response, resource["resourceType"])

    def conditional_update(self, resource: JsonDict, search: str) -> JsonDict:
        """PUT ``{type}?{search}``: replaces the one match or creates the resource."""
        response = self._send(
            "PUT",
            f"{self._base_url}/{resource['resourceType']}",
            params=dict(parse_qsl(search, keep_blank_values=True)),
            json_body=resource,
        )
        return self._resource_from(response, resource["resourceType"])

    def update(self, resource: JsonDict, *, if_match: str) -> JsonDict:
        """PUT ``{type}/{id}`` with If-Match on the version read before."""
        response = self._send(
            "PUT",
            f"{self._base_url}/{resource['resourceType']}/{resource['id']}",
            json_body=resource,
            headers={"If-Match": f'W/"{if_match}"'},
        )
        return self._resource_from(response, resource["resourceType"])

    def _resource_from(
        self, response: requests.Response, resource_type: str
    ) -> JsonDict:
        """The resource a write returned, or the one its Location names when the
        server answered with no body or an OperationOutcome (Prefer: minimal)."""
        body = _json(response) if response.content else {}
        if body.get("resourceType") == resource_type:
            return body
        location = response.headers.get("Location") or response.headers.get(
            "Content-Location"
        )
        if not location:
            raise RetryLater(
                f"FHIR {response.request.method} {resource_type} answered "
                f"{response.status_code} without the resource or a Location"
            )
        return _json(self._send("GET", urljoin(f"{self._base_url}/", location)))

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: JsonDict | None = None,
        headers: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> requests.Response:
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception(self._worth_waiting_for),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(
            self._send_once,
            method,
            url,
            params=params,
            json_body=json_body,
            headers=headers,
            missing_ok=missing_ok,
        )

    def _worth_waiting_for(self, error: BaseException) -> bool:
        if not isinstance(error, RetryLater):
            return False
        return error.retry_after is None or error.retry_after <= self._max_wait

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryLater) and error.retry_after is not None:
            return error.retry_after
        return float(self._backoff(state))

    def _send_once(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        json_body: JsonDict | None,
        headers: Mapping[str, str] | None,
        missing_ok: bool,
    ) -> requests.Response:
        all_headers = {"Accept": FHIR_JSON, **(headers or {})}
        if json_body is not None:
            all_headers["Content-Type"] = FHIR_JSON
            all_headers["Prefer"] = "return=representation"
        if self._token_provider is not None:
            all_headers["Authorization"] = f"Bearer {self._token_provider()}"
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=all_headers,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            # Connection refused or reset, timeouts, broken chunked bodies: all
            # worth another try; the bus dead-letters after its delivery limit.
            raise RetryLater(f"FHIR {method} failed: {type(exc).__name__}") from exc
        if response.ok or (missing_ok and response.status_code in (404, 410)):
            return response
        if response.status_code == 412 and "If-Match" in all_headers:
            raise PreconditionFailed(f"FHIR {method}: the resource changed meanwhile")
        raise _error_for(method, response)


def managed_identity_token_provider(
    base_url: str, client_id: str = ""
) -> Callable[[], str]:
    """Bearer tokens for AHDS FHIR from the Function App's managed identity.

    The credential caches tokens and renews them before they expire, so calling
    the provider on every request is cheap.
    """
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ManagedIdentityCredential

    credential = ManagedIdentityCredential(client_id=client_id or None)
    scope = f"{base_url.rstrip('/')}/.default"

    def token() -> str:
        try:
            return credential.get_token(scope).token
        except ClientAuthenticationError as exc:
            # The identity endpoint is unavailable or the role is missing; either
            # way the event must wait, not be dropped.
            raise RetryLater(f"no token for FHIR: {exc.message}") from exc

    return token


def _error_for(method: str, response: requests.Response) -> Exception:
    status = response.status_code
    what = f"FHIR {method} answered {status}"
    if status == 429 or status >= 500:
        return RetryLater(what, retry_after=_retry_after(response))
    if status in (400, 422):
        return Quarantine("fhir_invalid", f"{what}: {_diagnostics(response)}")
    if status == 412:
        return Quarantine("fhir_multiple_matches", f"{what}: {_diagnostics(response)}")
    if status in (401, 403):
        # The resource is fine; our identity or its role is not (an expired token,
        # a role assignment still propagating). Retry long after, as the DICOMweb
        # adapter does; if nobody fixes it the event is dead-lettered with this
        # reason, and the reconcile timer heals the study once it is fixed.
        _log.error("fhir_unauthorised", extra={"status": status})
        return RetryLater(
            f"{what}: answered {status}; check the identity's role",
            retry_after=AUTH_RETRY_AFTER_SECONDS,
        )
    if status == 409:
        # A concurrent write to the same resource (version conflict): retry.
        return RetryLater(what)
    return Quarantine("fhir_rejected", f"{what}: {_diagnostics(response)}")


def _retry_after(response: requests.Response) -> float | None:
    return retry_after_seconds(response.headers)


def _diagnostics(response: requests.Response) -> str:
    """What the OperationOutcome says, trimmed; the raw body's start otherwise."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:_MAX_DETAIL]
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return str(body)[:_MAX_DETAIL]
    messages = [
        issue.get("diagnostics") or issue.get("details", {}).get("text") or ""
        for issue in body.get("issue", [])
    ]
    return "; ".join(filter(None, messages))[:_MAX_DETAIL]


def _json(response: requests.Response) -> JsonDict:
    try:
        body = response.json()
    except ValueError:
        raise RetryLater(
            f"FHIR answered {response.status_code} with a body that is not JSON"
        ) from None
    if not isinstance(body, dict):
        raise RetryLater(f"FHIR answered {response.status_code} with no JSON object")
    return body


def _next_link(bundle: JsonDict) -> str | None:
    for link in bundle.get("link", []):
        if link.get("relation") == "next":
            return str(link.get("url")) or None
    return None
