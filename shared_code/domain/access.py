"""Who may do what: the caller's tenants and roles, from a validated token's claims.

Entra ID carries app roles in the ``roles`` claim. Membership of an exchange tenant
is the app role ``Tenant.<name>``; what a member may do is a role of its own:

| role             | grants                                           |
|------------------|--------------------------------------------------|
| ``Studies.Read`` | GET /api/studies/{uid}, GET /api/shares/{id}     |
| ``Shares.Write`` | POST /api/shares (from one of the caller's tenants) |

A caller of one tenant never reads another tenant's studies or shares.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from shared_code.errors import RequestRejected

TENANT_ROLE_PREFIX = "Tenant."
READ_STUDIES = "Studies.Read"
WRITE_SHARES = "Shares.Write"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    tenants: frozenset[str]
    roles: frozenset[str]

    def require(self, role: str) -> None:
        """Reject with 403 unless the caller holds ``role``."""
        if role not in self.roles:
            raise RequestRejected(403, f"the caller lacks the role {role}")

    def tenant_for(self, requested: str | None) -> str:
        """The tenant a request acts for: the one named, or the caller's only one."""
        if requested:
            if requested not in self.tenants:
                raise RequestRejected(403, f"the caller is not a member of {requested}")
            return requested
        if len(self.tenants) != 1:
            raise RequestRejected(
                400, "the caller belongs to several tenants: name one with ?tenant="
            )
        return next(iter(self.tenants))


def principal_from_claims(
    claims: Mapping[str, Any], known_tenants: Collection[str]
) -> Principal:
    """Build the caller from token claims; roles for unknown tenants are ignored."""
    raw_roles = claims.get("roles", [])
    if not isinstance(raw_roles, list) or not all(
        isinstance(r, str) for r in raw_roles
    ):
        raise RequestRejected(401, "the token's roles claim is not a list of strings")

    tenants = frozenset(
        role.removeprefix(TENANT_ROLE_PREFIX)
        for role in raw_roles
        if role.startswith(TENANT_ROLE_PREFIX)
        and role.removeprefix(TENANT_ROLE_PREFIX) in known_tenants
    )
    if not tenants:
        raise RequestRejected(403, "the caller is a member of no exchange tenant")

    subject = str(claims.get("oid") or claims.get("sub") or "")
    if not subject:
        raise RequestRejected(401, "the token names no subject (oid or sub)")
    return Principal(subject=subject, tenants=tenants, roles=frozenset(raw_roles))
