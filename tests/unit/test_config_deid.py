"""Per-tenant de-identification policy in the settings: defaults and validation."""

from __future__ import annotations

import json

import pytest

from shared_code.config import SettingsError, load_settings

KEY = "k" * 40


def _env(**research: object) -> dict[str, str]:
    tenant = {
        "dicomweb_root": "https://r.dicom.azurehealthcareapis.com/v2",
        "fhir_base_url": "https://r.fhir.azurehealthcareapis.com",
        "dicom_service_host": "r.dicom.azurehealthcareapis.com",
        "policy": "research",
        **research,
    }
    return {
        "AzureWebJobsStorage__blobServiceUri": "https://st.blob.core.windows.net",
        "ServiceBusConnection__fullyQualifiedNamespace": "sb.servicebus.windows.net",
        "COSMOS_ENDPOINT": "https://cosmos.documents.azure.com",
        "EXCHANGE_AUTH_ISSUER": "https://login.microsoftonline.com/t/v2.0",
        "EXCHANGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/t/keys",
        "EXCHANGE_AUTH_AUDIENCE": "api://dicom-exchange",
        "EXCHANGE_TENANTS": json.dumps({"research": tenant}),
        "EXCHANGE_PSEUDONYM_KEY_RESEARCH": KEY,
    }


def test_existing_tenants_get_the_basic_profile_and_quarantine() -> None:
    tenant = load_settings(_env()).tenant("research")

    assert tenant.deid_options == ()
    assert tenant.deid_burned_in == "quarantine"
    assert tenant.deid_safe_private == ()


def test_options_burned_in_and_safe_private_load() -> None:
    tenant = load_settings(
        _env(
            deid_options=["113107", "Clean Descriptors"],
            deid_burned_in="flag",
            deid_safe_private=["GEMS_PARM_01:10"],
        )
    ).tenant("research")

    assert tenant.deid_options == ("113107", "Clean Descriptors")
    assert tenant.deid_burned_in == "flag"
    assert tenant.deid_safe_private == ("GEMS_PARM_01:10",)


@pytest.mark.parametrize(
    "bad",
    [
        {"deid_options": ["Retain Everything"]},
        {"deid_options": ["113106", "113107"]},
        {"deid_burned_in": "release"},
        {"deid_safe_private": ["GEMS_PARM_01"]},
    ],
)
def test_a_wrong_policy_is_refused_at_load(bad: dict[str, object]) -> None:
    with pytest.raises(SettingsError, match="research"):
        load_settings(_env(**bad))
