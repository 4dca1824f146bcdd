"""What may stand for an identifier in a log line or an error detail."""

from __future__ import annotations

import hashlib


def uid_hash(uid: str) -> str:
    """A UID (or any identifier) as 12 hex digits of its SHA-256: enough to follow
    one instance through the logs, not enough to find it without the data."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]
