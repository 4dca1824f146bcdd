"""Bearer tokens for the local stack, signed with the key the stack generated.

Stands in for Entra ID on this machine: the app validates these with the same
code path it uses for Entra tokens (see shared_code/adapters/auth_jwt.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt


def mint_token(
    auth: dict[str, Any],
    *,
    subject: str,
    tenants: Iterable[str],
    roles: Iterable[str] = ("Studies.Read", "Shares.Write"),
    lifetime_seconds: int = 3600,
    **overrides: Any,
) -> str:
    """A signed RS256 token; ``auth`` is the ``auth`` section of .local/stack.json."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": auth["issuer"],
        "aud": auth["audience"],
        "sub": subject,
        "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, subject)),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
        "roles": [*(f"Tenant.{t}" for t in tenants), *roles],
    }
    claims.update(overrides)
    private_key = Path(auth["private_key_path"]).read_bytes()
    return jwt.encode(claims, private_key, algorithm="RS256")
