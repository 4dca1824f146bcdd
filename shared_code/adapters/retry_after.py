"""Reading a service's Retry-After, the same way for every adapter."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``x-ms-retry-after-ms``, ``retry-after-ms`` or
    ``Retry-After`` (seconds or an HTTP date); ``None`` when the service said none."""
    lowered = {key.lower(): value for key, value in headers.items()}
    for name in ("x-ms-retry-after-ms", "retry-after-ms"):
        if name in lowered:
            try:
                return max(float(lowered[name]) / 1000.0, 0.0)
            except ValueError:
                pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
