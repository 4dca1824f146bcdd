"""The app's settings: one typed, validated object, loaded once from the environment.

Nothing else in the project reads ``os.environ``. Every name here appears in
local.settings.sample.json and in the Function App's settings in infra/.

Tenants come as JSON in ``EXCHANGE_TENANTS``; their secrets never do. A tenant's
pseudonymisation key comes from ``EXCHANGE_PSEUDONYM_KEY_<TENANT>`` (a Key Vault
reference in Azure) and, locally only, its DICOMweb password from
``EXCHANGE_DICOMWEB_PASSWORD_<TENANT>``, where ``<TENANT>`` is the tenant name
upper-cased with ``-`` as ``_``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shared_code.domain.deid.policy import PolicyError, build_policy

Policy = Literal["clinical", "research"]
ServiceAuth = Literal["managed-identity", "basic", "none"]

_TENANT_FIELDS = {
    "dicomweb_root",
    "dicomweb_auth",
    "dicomweb_username",
    "dicom_service_host",
    "partition_name",
    "fhir_base_url",
    "fhir_auth",
    "policy",
    "patient_identifier_system",
    "share_to",
    "deid_options",
    "deid_burned_in",
    "deid_safe_private",
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class TenantSettings:
    """One organisation (an NHS Trust, a research group) and the services it owns."""

    name: str
    dicomweb_root: str
    fhir_base_url: str
    policy: Policy
    dicom_service_host: str
    partition_name: str = "Microsoft.Default"
    dicomweb_auth: ServiceAuth = "managed-identity"
    dicomweb_username: str = ""
    dicomweb_password: str = field(default="", repr=False)
    fhir_auth: ServiceAuth = "managed-identity"
    patient_identifier_system: str = ""
    pseudonym_key: bytes = field(default=b"", repr=False)
    share_to: tuple[str, ...] = ()
    # Research de-identification: PS3.15 options (CID 7050 codes or meanings), what
    # becomes of possible burned-in text, and safe private elements (CREATOR:EE).
    deid_options: tuple[str, ...] = ()
    deid_burned_in: Literal["quarantine", "flag"] = "quarantine"
    deid_safe_private: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Bounds on what one upload may cost; beyond them the upload is quarantined."""

    max_upload_bytes: int = 2 * 1024**3
    max_instance_bytes: int = 512 * 1024**2
    max_zip_members: int = 20_000
    max_zip_ratio: float = 200.0


@dataclass(frozen=True)
class Settings:
    storage_connection: str
    storage_account_url: str
    bus_kind: Literal["servicebus", "storage-queue"]
    servicebus_namespace: str
    state_kind: Literal["sqlite", "cosmos"]
    sqlite_path: str
    cosmos_endpoint: str
    cosmos_database: str
    auth_mode: Literal["entra", "local"]
    auth_issuer: str
    auth_audience: str
    auth_jwks_url: str
    auth_local_public_key_path: str
    managed_identity_client_id: str
    tenants: Mapping[str, TenantSettings]
    limits: Limits = Limits()
    uploads_container: str = "uploads"
    instances_container: str = "instances"
    quarantine_container: str = "quarantine"
    instances_queue: str = "instances"
    events_queue: str = "dicom-events"
    shares_queue: str = "shares"

    def tenant(self, name: str) -> TenantSettings:
        try:
            return self.tenants[name]
        except KeyError:
            raise SettingsError(f"unknown tenant {name!r}") from None

    def tenant_for_dicom_service(
        self, service_host: str, partition: str
    ) -> TenantSettings:
        """The tenant whose archive sent a DICOM event."""
        for tenant in self.tenants.values():
            if (
                tenant.dicom_service_host == service_host
                and tenant.partition_name == partition
            ):
                return tenant
        raise SettingsError(
            f"no tenant for DICOM service {service_host!r}/{partition!r}"
        )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate the settings from the environment (or the mapping given)."""
    env = os.environ if environ is None else environ
    bus_kind = _choice(
        env, "EXCHANGE_BUS_KIND", ("servicebus", "storage-queue"), "servicebus"
    )
    state_kind = _choice(env, "EXCHANGE_STATE_KIND", ("sqlite", "cosmos"), "cosmos")
    auth_mode = _choice(env, "EXCHANGE_AUTH_MODE", ("entra", "local"), "entra")

    settings = Settings(
        storage_connection=env.get("AzureWebJobsStorage", ""),
        storage_account_url=env.get("AzureWebJobsStorage__blobServiceUri", ""),
        bus_kind=bus_kind,  # type: ignore[arg-type]
        servicebus_namespace=env.get(
            "ServiceBusConnection__fullyQualifiedNamespace", ""
        ),
        state_kind=state_kind,  # type: ignore[arg-type]
        sqlite_path=env.get("EXCHANGE_SQLITE_PATH", ""),
        cosmos_endpoint=env.get("COSMOS_ENDPOINT", ""),
        cosmos_database=env.get("COSMOS_DATABASE", "exchange"),
        auth_mode=auth_mode,  # type: ignore[arg-type]
        auth_issuer=env.get("EXCHANGE_AUTH_ISSUER", ""),
        auth_audience=env.get("EXCHANGE_AUTH_AUDIENCE", ""),
        auth_jwks_url=env.get("EXCHANGE_AUTH_JWKS_URL", ""),
        auth_local_public_key_path=env.get("EXCHANGE_AUTH_LOCAL_PUBLIC_KEY_PATH", ""),
        managed_identity_client_id=env.get("AZURE_CLIENT_ID", ""),
        tenants=_tenants(env),
        limits=_limits(env),
    )
    _check(settings)
    return settings


def _choice(
    env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str
) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise SettingsError(
            f"{name} must be one of {', '.join(allowed)}; got {value!r}"
        )
    return value


def _tenants(env: Mapping[str, str]) -> dict[str, TenantSettings]:
    raw = env.get("EXCHANGE_TENANTS", "")
    if not raw:
        raise SettingsError("EXCHANGE_TENANTS is not set (JSON object of tenants)")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"EXCHANGE_TENANTS is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict) or not parsed:
        raise SettingsError("EXCHANGE_TENANTS must be a non-empty JSON object")

    tenants = {}
    for name, spec in parsed.items():
        if not isinstance(spec, dict):
            raise SettingsError(f"EXCHANGE_TENANTS[{name!r}] must be an object")
        unknown = set(spec) - _TENANT_FIELDS
        if unknown:
            raise SettingsError(
                f"EXCHANGE_TENANTS[{name!r}] has unknown keys {sorted(unknown)}"
            )
        secret_suffix = name.upper().replace("-", "_")
        key = env.get(f"EXCHANGE_PSEUDONYM_KEY_{secret_suffix}", "")
        if key.startswith("@Microsoft.KeyVault("):
            # App Service passes the reference itself when it cannot resolve it.
            raise SettingsError(
                f"EXCHANGE_PSEUDONYM_KEY_{secret_suffix} is an unresolved Key Vault "
                "reference: check the secret and the app's Key Vault Secrets User role"
            )
        try:
            tenants[name] = TenantSettings(
                name=name,
                dicomweb_root=spec["dicomweb_root"].rstrip("/"),
                fhir_base_url=spec["fhir_base_url"].rstrip("/"),
                policy=spec["policy"],
                dicom_service_host=spec["dicom_service_host"],
                partition_name=spec.get("partition_name", "Microsoft.Default"),
                dicomweb_auth=spec.get("dicomweb_auth", "managed-identity"),
                dicomweb_username=spec.get("dicomweb_username", ""),
                dicomweb_password=env.get(
                    f"EXCHANGE_DICOMWEB_PASSWORD_{secret_suffix}", ""
                ),
                fhir_auth=spec.get("fhir_auth", "managed-identity"),
                patient_identifier_system=spec.get("patient_identifier_system", ""),
                pseudonym_key=key.encode(),
                share_to=tuple(spec.get("share_to", ())),
                deid_options=tuple(spec.get("deid_options", ())),
                deid_burned_in=spec.get("deid_burned_in", "quarantine"),
                deid_safe_private=tuple(spec.get("deid_safe_private", ())),
            )
        except KeyError as exc:
            raise SettingsError(
                f"EXCHANGE_TENANTS[{name!r}] lacks {exc.args[0]!r}"
            ) from None
    return tenants


def _limits(env: Mapping[str, str]) -> Limits:
    defaults = Limits()
    try:
        return Limits(
            max_upload_bytes=int(
                env.get("EXCHANGE_MAX_UPLOAD_BYTES", defaults.max_upload_bytes)
            ),
            max_instance_bytes=int(
                env.get("EXCHANGE_MAX_INSTANCE_BYTES", defaults.max_instance_bytes)
            ),
            max_zip_members=int(
                env.get("EXCHANGE_MAX_ZIP_MEMBERS", defaults.max_zip_members)
            ),
            max_zip_ratio=float(
                env.get("EXCHANGE_MAX_ZIP_RATIO", defaults.max_zip_ratio)
            ),
        )
    except ValueError as exc:
        raise SettingsError(f"an EXCHANGE_MAX_* limit is not a number: {exc}") from None


def _check(settings: Settings) -> None:
    if not settings.storage_connection and not settings.storage_account_url:
        raise SettingsError(
            "set AzureWebJobsStorage (connection string) or "
            "AzureWebJobsStorage__blobServiceUri (managed identity)"
        )
    if settings.bus_kind == "servicebus" and not settings.servicebus_namespace:
        raise SettingsError("ServiceBusConnection__fullyQualifiedNamespace is not set")
    if settings.state_kind == "sqlite" and not settings.sqlite_path:
        raise SettingsError("EXCHANGE_SQLITE_PATH is not set")
    if settings.state_kind == "cosmos" and not settings.cosmos_endpoint:
        raise SettingsError("COSMOS_ENDPOINT is not set")
    if settings.auth_mode == "entra" and not (
        settings.auth_issuer and settings.auth_jwks_url
    ):
        raise SettingsError(
            "EXCHANGE_AUTH_ISSUER and EXCHANGE_AUTH_JWKS_URL are required"
        )
    if settings.auth_mode == "local" and not settings.auth_local_public_key_path:
        raise SettingsError("EXCHANGE_AUTH_LOCAL_PUBLIC_KEY_PATH is not set")
    if not settings.auth_audience:
        raise SettingsError("EXCHANGE_AUTH_AUDIENCE is not set")

    for tenant in settings.tenants.values():
        for name, auth in (
            ("dicomweb_auth", tenant.dicomweb_auth),
            ("fhir_auth", tenant.fhir_auth),
        ):
            if auth not in ("managed-identity", "basic", "none"):
                raise SettingsError(
                    f"tenant {tenant.name!r}: {name} must be managed-identity, basic "
                    f"or none; got {auth!r}"
                )
        if tenant.policy not in ("clinical", "research"):
            raise SettingsError(
                f"tenant {tenant.name!r}: policy must be clinical or research"
            )
        _check_deid(tenant)
        if tenant.policy == "research" and len(tenant.pseudonym_key) < 32:
            raise SettingsError(
                f"tenant {tenant.name!r} de-identifies: EXCHANGE_PSEUDONYM_KEY_"
                f"{tenant.name.upper().replace('-', '_')} needs 32 characters or more"
            )
        for target in tenant.share_to:
            if target not in settings.tenants:
                raise SettingsError(
                    f"tenant {tenant.name!r} shares to unknown {target!r}"
                )


def _check_deid(tenant: TenantSettings) -> None:
    try:
        build_policy(
            tenant.deid_options, tenant.deid_safe_private, tenant.deid_burned_in
        )
    except PolicyError as exc:
        raise SettingsError(f"tenant {tenant.name!r}: {exc}") from None
