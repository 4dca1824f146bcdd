"""Translate Azure SDK exceptions into ``shared_code.errors``, once, for every adapter.

The blob, queue, Service Bus and Cosmos adapters wrap their SDK calls in
``translated(...)`` so the use cases only ever see the project's error classes.

| SDK exception (status) | becomes | why |
|---|---|---|
| ServiceRequestError, ServiceResponseError, their timeouts | RetryLater | no answer |
| 408, 429, 500, 502, 503, 504, any 5xx | RetryLater(retry_after) | throttled, outage |
| HttpResponseError without a status (decode, short read) | RetryLater | in transit |
| ResourceNotFoundError (404) | caller's ``not_found``, else RetryLater | see (a) |
| ResourceExistsError (409) | AlreadyExists | create-only write, key taken |
| ResourceModifiedError (412) | PreconditionFailed | optimistic write lost |
| ClientAuthenticationError, 401, 403 | RetryLater, logged as error | see (b) |
| 413 | Quarantine("too_large") | can never fit |
| other 4xx | Quarantine("rejected_by_service") | retrying cannot help |
| MessageSizeExceededError | Quarantine("message_too_large") | can never be sent |
| ServiceBusServerBusyError, ServiceBusConnectionError, | RetryLater | transient (the |
| ServiceBusCommunicationError, OperationTimeoutError | | SDK: retryable) |
| MessagingEntityNotFoundError, ...DisabledError | RetryLater, logged as error | (a) |
| ServiceBusAuthenticationError, ...AuthorizationError | RetryLater, logged | (b) |
| ServiceBusQuotaExceededError, other ServiceBusError | RetryLater | drains, relinks |
| any other AzureError | RetryLater | transport, not input |

``retry_after`` comes from ``x-ms-retry-after-ms`` / ``retry-after-ms`` (milliseconds)
or ``Retry-After`` (seconds or an HTTP date).

(a) A missing blob is bad input, so the blob adapter passes ``Quarantine``; a missing
    container, queue or database is a deployment error: the message is not at fault,
    so it must not be quarantined; RetryLater keeps it until the delivery limit
    dead-letters it with this reason, and a fixed deployment lets redelivery work.
(b) Authentication and authorisation failures (an expired token, a missing role
    assignment) are operator problems that a fix or a token refresh cures, not bad
    input; they are logged at error level so that someone notices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)

from shared_code.adapters.retry_after import retry_after_seconds
from shared_code.errors import (
    AlreadyExists,
    ExchangeError,
    PreconditionFailed,
    Quarantine,
    RetryLater,
)

_log = logging.getLogger(__name__)

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_OPERATOR_STATUS = frozenset({401, 403})

NotFound = Callable[[], ExchangeError]


@contextmanager
def translated(what: str, *, not_found: NotFound | None = None) -> Iterator[None]:
    """Run the block, turning any ``AzureError`` into the project's error for it.

    ``what`` names the operation for messages and logs (never PHI); ``not_found``
    builds the error for a 404 when the caller knows what a missing thing means.
    """
    try:
        yield
    except AzureError as exc:
        raise translate(exc, what, not_found=not_found) from exc


def translate(
    exc: AzureError, what: str, *, not_found: NotFound | None = None
) -> ExchangeError:
    """The project's error for one SDK exception, per the table above."""
    if isinstance(exc, ServiceBusError):
        return _translate_service_bus(exc, what)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return RetryLater(f"{what}: service unreachable ({type(exc).__name__})")
    if not isinstance(exc, HttpResponseError):
        return RetryLater(f"{what}: {type(exc).__name__}")

    status = exc.status_code
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        if not_found is not None:
            return not_found()
        _log.error("%s: resource missing (deployment error?): %s", what, _code(exc))
        return RetryLater(f"{what}: resource missing ({_code(exc)})")
    if isinstance(exc, ResourceExistsError) or status == 409:
        return AlreadyExists(f"{what}: already exists")
    if isinstance(exc, ResourceModifiedError) or status == 412:
        return PreconditionFailed(f"{what}: changed since read")
    if isinstance(exc, ClientAuthenticationError) or status in _OPERATOR_STATUS:
        _log.error("%s: not authorised (%s): fix identity or role", what, status)
        return RetryLater(f"{what}: not authorised ({status})")
    if status is None or status in _TRANSIENT_STATUS or status >= 500:
        return RetryLater(
            f"{what}: service answered {status}",
            retry_after=retry_after_seconds(_headers(exc)),
        )
    if status == 413:
        return Quarantine("too_large", f"{what}: request body too large")
    return Quarantine("rejected_by_service", f"{what}: {status} {_code(exc)}")


def _translate_service_bus(exc: ServiceBusError, what: str) -> ExchangeError:
    if isinstance(exc, MessageSizeExceededError):
        return Quarantine("message_too_large", f"{what}: {exc.message}")
    if isinstance(
        exc,
        MessagingEntityNotFoundError
        | MessagingEntityDisabledError
        | ServiceBusAuthenticationError
        | ServiceBusAuthorizationError,
    ):
        _log.error("%s: %s: fix the deployment", what, type(exc).__name__)
    return RetryLater(f"{what}: {type(exc).__name__}")


def _headers(exc: HttpResponseError) -> Mapping[str, str]:
    # Cosmos keeps the headers on the exception; azure.core on the response.
    headers = getattr(exc, "headers", None)
    if headers:
        return headers
    return getattr(exc.response, "headers", None) or {}


def _code(exc: HttpResponseError) -> str:
    # Storage errors carry the service's error code (ContainerNotFound...).
    return str(getattr(exc, "error_code", None) or exc.reason or exc.status_code)
