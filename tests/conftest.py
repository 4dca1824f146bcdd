"""Shared fixtures: the local stack's addresses, for tests that talk to real servers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def stack() -> dict[str, Any]:
    """The running local stack, as ``python -m localdev.stack start`` described it."""
    path = Path(os.environ.get("EXCHANGE_STACK_FILE", ROOT / ".local" / "stack.json"))
    if not path.exists():
        pytest.fail(
            f"{path} is missing: start the local stack first "
            "(python -m localdev.stack start)"
        )
    return json.loads(path.read_text())
