"""Bearer tokens and the caller's tenants: the checks every HTTP route relies on."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localdev.tokens import mint_token
from shared_code.adapters.auth_jwt import BearerTokenValidator
from shared_code.domain.access import (
    READ_STUDIES,
    WRITE_SHARES,
    principal_from_claims,
)
from shared_code.errors import RequestRejected

ISSUER = "https://login.exchange.test/"
AUDIENCE = "api://dicom-exchange-test"
TENANTS = ("trust-a", "trust-b")


def _key_pair(folder: Path, name: str) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return {
        "private_key_path": str(private),
        "public_key_path": str(public),
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    folder = tmp_path_factory.mktemp("keys")
    return {"ours": _key_pair(folder, "ours"), "theirs": _key_pair(folder, "theirs")}


@pytest.fixture(scope="module")
def validator(keys: dict[str, dict[str, str]]) -> BearerTokenValidator:
    return BearerTokenValidator.for_local_key(
        issuer=ISSUER,
        audience=AUDIENCE,
        public_key_path=keys["ours"]["public_key_path"],
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_valid_token_gives_its_tenants_and_roles(keys, validator) -> None:
    token = mint_token(keys["ours"], subject="clerk", tenants=["trust-a"])

    principal = principal_from_claims(validator.claims(_bearer(token)), TENANTS)

    assert principal.tenants == {"trust-a"}
    principal.require(READ_STUDIES)
    principal.require(WRITE_SHARES)
    assert principal.tenant_for(None) == "trust-a"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"lifetime_seconds": -600}, "expired"),
        ({"aud": "api://someone-else"}, "audience"),
        ({"iss": "https://login.elsewhere/"}, "issuer"),
    ],
)
def test_tokens_that_fail_a_check_are_rejected_with_401(
    keys, validator, change, why
) -> None:
    token = mint_token(keys["ours"], subject="clerk", tenants=["trust-a"], **change)

    with pytest.raises(RequestRejected) as caught:
        validator.claims(_bearer(token))

    assert caught.value.status == 401, why


def test_a_token_signed_with_another_key_is_rejected(keys, validator) -> None:
    token = mint_token(keys["theirs"], subject="intruder", tenants=["trust-a"])

    with pytest.raises(RequestRejected) as caught:
        validator.claims(_bearer(token))

    assert caught.value.status == 401


def test_an_unsigned_token_is_rejected(validator) -> None:
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "roles": []},
        key="",
        algorithm="none",
    )

    with pytest.raises(RequestRejected) as caught:
        validator.claims(_bearer(token))

    assert caught.value.status == 401


@pytest.mark.parametrize(
    "header", [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}]
)
def test_a_request_without_a_bearer_token_is_rejected(validator, header) -> None:
    with pytest.raises(RequestRejected) as caught:
        validator.claims(header)

    assert caught.value.status == 401


def test_roles_for_unknown_tenants_grant_nothing() -> None:
    claims = {"sub": "x", "roles": ["Tenant.elsewhere", READ_STUDIES]}

    with pytest.raises(RequestRejected) as caught:
        principal_from_claims(claims, TENANTS)

    assert caught.value.status == 403


def test_a_member_of_one_tenant_cannot_act_for_another() -> None:
    principal = principal_from_claims(
        {"sub": "x", "roles": ["Tenant.trust-a", READ_STUDIES]}, TENANTS
    )

    with pytest.raises(RequestRejected) as caught:
        principal.tenant_for("trust-b")

    assert caught.value.status == 403
    with pytest.raises(RequestRejected):
        principal.require(WRITE_SHARES)


def test_a_member_of_several_tenants_must_name_one() -> None:
    principal = principal_from_claims(
        {"sub": "x", "roles": ["Tenant.trust-a", "Tenant.trust-b"]}, TENANTS
    )

    with pytest.raises(RequestRejected) as caught:
        principal.tenant_for(None)

    assert caught.value.status == 400
    assert principal.tenant_for("trust-b") == "trust-b"
