"""Access to PS3.15 Table E.1-1 under a policy: the action and the rule that gives
it for any tag, options applied (a Retain option's K wins over a Clean option's C,
both over the Basic Profile; Retain UIDs keeps every UID the profile would map)."""

from __future__ import annotations

import logging
from functools import lru_cache

from shared_code.domain.deid import ps315_table
from shared_code.domain.deid.policy import RETAIN_UIDS, DeidPolicy

_log = logging.getLogger(__name__)

EDITION = ps315_table.EDITION
BASIC = "E.1-1"


def table_action(tag: int, policy: DeidPolicy) -> tuple[str, str] | None:
    """(action, rule) for a public tag listed in the table, else None.

    The action is the table's: conditionals such as X/Z/D are left to the engine.
    """
    return _table_actions(policy.options).get(tag) or _wildcard(tag, policy.options)


def in_standard_iod(tag: int) -> bool:
    """Whether the table marks the attribute as used in a standard composite IOD."""
    return tag in ps315_table.IN_STANDARD_IOD


def private_action(policy: DeidPolicy) -> str:
    """X, or C when Retain Safe Private is chosen (C: keep the safe ones only)."""
    if policy.options & ps315_table.PRIVATE_OPTIONS.keys():
        return "C"
    return ps315_table.PRIVATE_ACTION


@lru_cache(maxsize=64)
def _table_actions(options: frozenset[str]) -> dict[int, tuple[str, str]]:
    actions = {
        tag: (action, BASIC) for tag, action in ps315_table.BASIC_PROFILE.items()
    }
    for tag in actions:
        override = _option_action(tag, options)
        if override is not None:
            actions[tag] = override
        elif RETAIN_UIDS in options and actions[tag][0] == "U":
            # A UID the option's column misses would break a reference it keeps.
            actions[tag] = ("K", RETAIN_UIDS)
    return actions


def _wildcard(tag: int, options: frozenset[str]) -> tuple[str, str] | None:
    for mask, value, action in ps315_table.WILDCARD_RULES:
        if tag & mask == value:
            return _option_action(value, options) or (action, BASIC)
    return None


def _option_action(key: int, options: frozenset[str]) -> tuple[str, str] | None:
    chosen = [
        (ps315_table.OPTIONS[code][key], code)
        for code in sorted(options)
        if key in ps315_table.OPTIONS.get(code, {})
    ]
    for action, code in chosen:
        if action == "K":
            return action, code
    return chosen[0] if chosen else None
