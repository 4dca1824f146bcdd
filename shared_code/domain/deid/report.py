"""The per-instance de-identification report: which rule acted on which attribute
path. It holds paths and rule names only, never values, so it can be kept for audit
and logged."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

_log = logging.getLogger(__name__)


@dataclass
class DeidReport:
    """``entries`` are (attribute path, rule, action) in the order applied.

    A rule is ``E.1-1`` (the Basic Profile row), a CID 7050 option code that changed
    the row's action, or one of ``private``, ``safe-private``, ``group-length``,
    ``overlay``, ``curve``, ``unknown-public`` and ``file-meta``.
    """

    edition: str
    options: tuple[str, ...]
    entries: list[tuple[str, str, str]] = field(default_factory=list)
    burned_in_risk: bool = False
    burned_in_reason: str = ""

    def add(self, path: str, rule: str, action: str) -> None:
        self.entries.append((path, rule, action))

    def counts(self) -> dict[str, int]:
        """Entries by action, for a log line or a metric."""
        return dict(Counter(action for _, _, action in self.entries))

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form for the audit record."""
        return {
            "edition": self.edition,
            "options": list(self.options),
            "burned_in_risk": self.burned_in_risk,
            "burned_in_reason": self.burned_in_reason,
            "entries": [list(entry) for entry in self.entries],
        }
