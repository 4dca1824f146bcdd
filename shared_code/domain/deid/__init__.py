"""De-identification for research and AI: PS3.15 Annex E Table E.1-1 with its
options, stateless keyed pseudonyms, a leak gate that does not trust the engine,
and a per-instance report of what was done.

Use: ``needles = collect_needles(ds, policy)``; ``report = deidentify(ds, key,
policy)``; ``check_no_leak(needles, ds)``; only then release ``ds``.
"""

from __future__ import annotations

import logging

from shared_code.domain.deid.engine import burned_in_risk, deidentify
from shared_code.domain.deid.leak_gate import Needles, check_no_leak, collect_needles
from shared_code.domain.deid.policy import (
    CODE_MEANINGS,
    DeidPolicy,
    PolicyError,
    SafePrivate,
    build_policy,
    parse_options,
    parse_safe_private,
)
from shared_code.domain.deid.pseudonyms import (
    date_shift_days,
    keyed_uid,
    patient_id_pseudonym,
    patient_name_pseudonym,
    person_name_pseudonym,
)
from shared_code.domain.deid.report import DeidReport
from shared_code.domain.deid.table import EDITION

_log = logging.getLogger(__name__)

__all__ = [
    "CODE_MEANINGS",
    "EDITION",
    "DeidPolicy",
    "DeidReport",
    "Needles",
    "PolicyError",
    "SafePrivate",
    "build_policy",
    "burned_in_risk",
    "check_no_leak",
    "collect_needles",
    "date_shift_days",
    "deidentify",
    "keyed_uid",
    "parse_options",
    "parse_safe_private",
    "patient_id_pseudonym",
    "patient_name_pseudonym",
    "person_name_pseudonym",
]
