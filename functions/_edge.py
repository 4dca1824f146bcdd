"""What every trigger does at the edge: decode the input, call, map errors to outcomes.

- HTTP: validate the bearer token, call the use case, answer JSON; ``RequestRejected``
  becomes its status, ``RetryLater`` a 503 with Retry-After.
- Bus messages: decode the JSON body; a ``Quarantine`` sets the message aside
  (quarantine container + audit) and completes it, so poison does not block the
  queue; ``RetryLater`` and anything unexpected propagate, and the host redelivers
  and, past the delivery limit, dead-letters the message with the error as reason.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import azure.functions as func

from shared_code.domain.access import Principal, principal_from_claims
from shared_code.errors import Quarantine, RequestRejected, RetryLater
from shared_code.services.ingest import UNKNOWN_TENANT
from shared_code.services.quarantine import quarantine
from shared_code.wiring import Context, context

_log = logging.getLogger(__name__)

JSON = "application/json"
MAX_RESCHEDULES = 10
MAX_RETRY_AFTER_SECONDS = 3600.0
_RETRY_MARK = "~retry"


def json_response(body: Any, status: int = 200, **headers: str) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, indent=2), status_code=status, mimetype=JSON, headers=headers
    )


def handle_http(
    req: func.HttpRequest, call: Callable[[Context, Principal], tuple[int, Any]]
) -> func.HttpResponse:
    """Authenticate the caller, run ``call``, answer with its status and JSON."""
    try:
        ctx = context()
        claims = ctx.token_validator.claims(dict(req.headers))
        principal = principal_from_claims(claims, ctx.settings.tenants)
        status, body = call(ctx, principal)
        return json_response(body, status)
    except RequestRejected as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return json_response({"error": str(exc)}, exc.status, **headers)
    except RetryLater as exc:
        retry_after = str(math.ceil(exc.retry_after or 5))
        return json_response(
            {"error": "a service is busy; try again later"},
            503,
            **{"Retry-After": retry_after},
        )
    except Quarantine as exc:
        return json_response({"error": exc.reason, "detail": exc.detail}, 422)


def request_json(req: func.HttpRequest) -> Mapping[str, Any]:
    try:
        body = req.get_json()
    except ValueError:
        raise RequestRejected(400, "the request body must be JSON") from None
    if not isinstance(body, dict):
        raise RequestRejected(400, "the request body must be a JSON object")
    return body


def handle_message(
    msg: func.ServiceBusMessage,
    queue: str,
    call: Callable[[Context, Mapping[str, Any]], Any],
    *,
    tenant_of: Callable[[Mapping[str, Any]], str] = lambda body: UNKNOWN_TENANT,
) -> Any:
    """Decode a bus message and run ``call``; set poison aside with its reason."""
    ctx = context()
    raw = msg.get_body()
    body: Mapping[str, Any] = {}
    try:
        decoded = json.loads(raw)
        # The use case checks the shape: an Event Grid batch, for one, is a list.
        body = decoded if isinstance(decoded, dict) else {}
        return call(ctx, decoded)
    except RetryLater as exc:
        if not _reschedule(ctx, queue, msg, body, exc):
            raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        error = Quarantine("malformed_message", f"the body is not JSON: {exc}")
        _set_aside(ctx, queue, msg, raw, error, UNKNOWN_TENANT)
    except Quarantine as error:
        tenant = tenant_of(body)
        if tenant not in ctx.settings.tenants:
            tenant = UNKNOWN_TENANT
        _set_aside(ctx, queue, msg, raw, error, tenant)
    return None


def _reschedule(
    ctx: Context,
    queue: str,
    msg: func.ServiceBusMessage,
    body: Mapping[str, Any],
    exc: RetryLater,
) -> bool:
    """Honour a service's Retry-After: send the message again, delayed, and complete
    this one. Service Bus itself would redeliver at once and spend the delivery count.

    Past ``MAX_RESCHEDULES`` (or with no Retry-After) the error propagates, and the
    host's own retries and dead-lettering take over.
    """
    if exc.retry_after is None or not body:
        return False
    base, _, attempt = (getattr(msg, "message_id", None) or "").rpartition(_RETRY_MARK)
    if not base:
        base, attempt = getattr(msg, "message_id", None) or "", "0"
    attempts = int(attempt) if attempt.isdigit() else 0
    if not base or attempts >= MAX_RESCHEDULES:
        return False
    delay = min(max(exc.retry_after, 1.0), MAX_RETRY_AFTER_SECONDS)
    ctx.bus.send(
        queue, body, message_id=f"{base}{_RETRY_MARK}{attempts + 1}", delay=delay
    )
    _log.info(
        "rescheduled after Retry-After",
        extra={"queue": queue, "attempt": attempts + 1, "delay_s": delay},
    )
    return True


def _set_aside(
    ctx: Context,
    queue: str,
    msg: func.ServiceBusMessage,
    raw: bytes,
    error: Quarantine,
    tenant: str,
) -> None:
    message_id = getattr(msg, "message_id", None) or "unknown"
    quarantine(
        ctx.blobs,
        ctx.state,
        ctx.settings.quarantine_container,
        tenant=tenant,
        source=f"queue:{queue}",
        name=f"messages/{queue}/{message_id}.json",
        data=raw,
        error=error,
        step=queue,
    )
