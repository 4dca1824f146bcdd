"""Bearer token validation: Entra ID in Azure, a local signing key on this machine.

Both paths run the same checks (RS256 signature, issuer, audience, expiry,
not-before); they differ only in where the public key comes from: Entra's JWKS
document, or a PEM file that the local stack generated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt

from shared_code.errors import RequestRejected, RetryLater

_log = logging.getLogger(__name__)

_ALGORITHMS = ["RS256"]
_LEEWAY_SECONDS = 60


class BearerTokenValidator:
    """Validates ``Authorization: Bearer`` headers and returns the token's claims."""

    def __init__(
        self, *, issuer: str, audience: str, key_for: Callable[[str], Any]
    ) -> None:
        self._issuer = issuer
        self._audience = audience
        self._key_for = key_for

    @classmethod
    def for_entra(
        cls, *, issuer: str, audience: str, jwks_url: str
    ) -> BearerTokenValidator:
        jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=3600)

        def key_for(token: str) -> Any:
            try:
                return jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError as exc:
                raise RetryLater(
                    f"the JWKS document could not be fetched: {exc}"
                ) from exc

        return cls(issuer=issuer, audience=audience, key_for=key_for)

    @classmethod
    def for_local_key(
        cls, *, issuer: str, audience: str, public_key_path: str
    ) -> BearerTokenValidator:
        public_key = Path(public_key_path).read_bytes()
        return cls(issuer=issuer, audience=audience, key_for=lambda _token: public_key)

    def claims(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """The validated claims of the request's bearer token; 401 without one."""
        token = _bearer_token(headers)
        try:
            key = self._key_for(token)
            return jwt.decode(
                token,
                key=key,
                algorithms=_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientError as exc:
            raise RequestRejected(401, f"unknown signing key: {exc}") from exc
        except jwt.InvalidTokenError as exc:
            _log.info("bearer token rejected", extra={"why": type(exc).__name__})
            raise RequestRejected(401, f"invalid bearer token: {exc}") from exc


def _bearer_token(headers: Mapping[str, str]) -> str:
    value = ""
    for name, header in headers.items():
        if name.lower() == "authorization":
            value = header
            break
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestRejected(401, "an Authorization: Bearer token is required")
    return token.strip()
