"""Errors classified by what the caller must do.

Every adapter translates its SDK or HTTP errors into one of these at the boundary,
so the use cases and the triggers never see ``requests`` or ``azure.core`` exceptions.

- ``RetryLater``: a transient failure (timeout, 429, 5xx, lock lost). Try again, after
  ``retry_after`` seconds when the service said so. A bus message is abandoned and
  comes back; past the delivery limit it is dead-lettered with this error as reason.
- ``Quarantine``: the input itself is bad or cannot be handled (not DICOM, missing
  UIDs, unsupported transfer syntax, a conflicting SOP Instance UID). Retrying cannot
  help: the item is set aside with ``reason`` (a stable code) and ``detail`` (for
  people), and the work goes on.
- ``RequestRejected``: an HTTP caller asked for something wrong or forbidden;
  ``status`` is the HTTP status the trigger answers with.
- ``NotSupported``: a ``Quarantine`` naming a feature this project does not implement.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Base class of every error this project raises on purpose."""


class RetryLater(ExchangeError):
    """A transient failure: the same call may succeed later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Quarantine(ExchangeError):
    """The item cannot be processed; set it aside with a reason and go on."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NotSupported(Quarantine):
    """A feature the project does not implement; ``detail`` says what to do instead."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"not_supported.{what}", detail)


class InstanceConflict(Quarantine):
    """A different object arrived under a SOP Instance UID the archive already holds."""

    def __init__(self, detail: str) -> None:
        super().__init__("sop_instance_conflict", detail)


class RequestRejected(ExchangeError):
    """An HTTP caller's request is wrong, unauthenticated or forbidden."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AlreadyExists(ExchangeError):
    """A create-only write found a record with the same key (state store)."""


class PreconditionFailed(ExchangeError):
    """An optimistic-concurrency write lost: the record changed since it was read."""
