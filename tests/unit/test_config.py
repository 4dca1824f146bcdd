"""Settings: every name is validated once, and a bad one is named in the error."""

from __future__ import annotations

import json

import pytest

from shared_code.config import SettingsError, load_settings

KEY = "k" * 40


def _env(**overrides: str) -> dict[str, str]:
    tenants = {
        "trust-a": {
            "dicomweb_root": "https://a.dicom.azurehealthcareapis.com/v2/",
            "fhir_base_url": "https://a.fhir.azurehealthcareapis.com",
            "dicom_service_host": "a.dicom.azurehealthcareapis.com",
            "policy": "clinical",
            "share_to": ["research"],
        },
        "research": {
            "dicomweb_root": "https://r.dicom.azurehealthcareapis.com/v2",
            "fhir_base_url": "https://r.fhir.azurehealthcareapis.com",
            "dicom_service_host": "r.dicom.azurehealthcareapis.com",
            "policy": "research",
        },
    }
    env = {
        "AzureWebJobsStorage__blobServiceUri": "https://st.blob.core.windows.net",
        "ServiceBusConnection__fullyQualifiedNamespace": "sb.servicebus.windows.net",
        "COSMOS_ENDPOINT": "https://cosmos.documents.azure.com",
        "EXCHANGE_AUTH_ISSUER": "https://login.microsoftonline.com/t/v2.0",
        "EXCHANGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/t/keys",
        "EXCHANGE_AUTH_AUDIENCE": "api://dicom-exchange",
        "EXCHANGE_TENANTS": json.dumps(tenants),
        "EXCHANGE_PSEUDONYM_KEY_RESEARCH": KEY,
    }
    env.update(overrides)
    return env


def test_azure_settings_load_with_their_defaults() -> None:
    settings = load_settings(_env())

    assert settings.bus_kind == "servicebus"
    assert settings.state_kind == "cosmos"
    assert settings.tenant("trust-a").dicomweb_root.endswith("/v2")
    assert settings.tenant("research").pseudonym_key == KEY.encode()
    found = settings.tenant_for_dicom_service(
        "r.dicom.azurehealthcareapis.com", "Microsoft.Default"
    )
    assert found.name == "research"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"EXCHANGE_TENANTS": ""}, "EXCHANGE_TENANTS"),
        ({"EXCHANGE_TENANTS": "{not json"}, "EXCHANGE_TENANTS"),
        (
            {"EXCHANGE_PSEUDONYM_KEY_RESEARCH": "short"},
            "EXCHANGE_PSEUDONYM_KEY_RESEARCH",
        ),
        ({"EXCHANGE_BUS_KIND": "carrier-pigeon"}, "EXCHANGE_BUS_KIND"),
        ({"ServiceBusConnection__fullyQualifiedNamespace": ""}, "ServiceBusConnection"),
        ({"EXCHANGE_AUTH_AUDIENCE": ""}, "EXCHANGE_AUTH_AUDIENCE"),
        ({"EXCHANGE_MAX_ZIP_RATIO": "lots"}, "EXCHANGE_MAX_"),
        (
            {
                "EXCHANGE_PSEUDONYM_KEY_RESEARCH": "@Microsoft.KeyVault("
                "SecretUri=https://kv.vault.azure.net/secrets/pseudonym-key-research/)"
            },
            "unresolved Key Vault reference",
        ),
    ],
)
def test_a_bad_setting_is_named(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(_env(**overrides))


def test_a_share_route_to_an_unknown_tenant_is_refused() -> None:
    tenants = json.loads(_env()["EXCHANGE_TENANTS"])
    tenants["trust-a"]["share_to"] = ["nowhere"]

    with pytest.raises(SettingsError, match="nowhere"):
        load_settings(_env(EXCHANGE_TENANTS=json.dumps(tenants)))


def test_an_unknown_dicom_service_is_an_error() -> None:
    with pytest.raises(SettingsError, match="no tenant"):
        load_settings(_env()).tenant_for_dicom_service("x", "Microsoft.Default")


def test_a_misspelt_service_auth_is_refused_not_sent_unauthenticated() -> None:
    tenants = json.loads(_env()["EXCHANGE_TENANTS"])
    tenants["trust-a"]["dicomweb_auth"] = "managed_identity"

    with pytest.raises(SettingsError, match="dicomweb_auth"):
        load_settings(_env(EXCHANGE_TENANTS=json.dumps(tenants)))
