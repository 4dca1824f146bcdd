"""Builds the adapters once per process from the settings and hands out the ports.

The triggers ask ``context()`` for what their use case needs; clients (HTTP sessions,
storage and bus clients, credentials) are created on first use and reused.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pydicom.config

from shared_code.config import Settings, TenantSettings, load_settings
from shared_code.ports import BlobStore, DicomArchive, FhirStore, MessageBus, StateStore


def quiet_libraries() -> None:
    """Keep patient data out of the logs that libraries write on their own.

    pydicom warns (and logs) invalid values *with the value*, such as a malformed
    Patient Birth Date; the pipeline reports bad input through quarantine instead.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


class Context:
    """The process-wide ports, created lazily: a cold start pays for what it uses."""

    def __init__(self, settings: Settings) -> None:
        quiet_libraries()
        self.settings = settings
        self._lock = threading.Lock()
        self._archives: dict[str, DicomArchive] = {}
        self._fhir: dict[str, FhirStore] = {}

    @functools.cached_property
    def blobs(self) -> BlobStore:
        from shared_code.adapters.blob_storage import blob_store_from_settings

        return blob_store_from_settings(
            connection_string=self.settings.storage_connection,
            account_url=self.settings.storage_account_url,
            client_id=self.settings.managed_identity_client_id,
        )

    @functools.cached_property
    def bus(self) -> MessageBus:
        from shared_code.adapters import bus

        if self.settings.bus_kind == "storage-queue":
            return bus.StorageQueueBus(self.settings.storage_connection)
        return bus.ServiceBusBus(
            self.settings.servicebus_namespace, self._azure_credential()
        )

    @functools.cached_property
    def state(self) -> StateStore:
        if self.settings.state_kind == "sqlite":
            from shared_code.adapters.state_sqlite import SqliteStateStore

            return SqliteStateStore(self.settings.sqlite_path)
        from shared_code.adapters.state_cosmos import CosmosStateStore

        return CosmosStateStore(
            self.settings.cosmos_endpoint,
            self._azure_credential(),
            self.settings.cosmos_database,
        )

    @functools.cached_property
    def token_validator(self) -> Any:
        from shared_code.adapters.auth_jwt import BearerTokenValidator

        if self.settings.auth_mode == "local":
            return BearerTokenValidator.for_local_key(
                issuer=self.settings.auth_issuer,
                audience=self.settings.auth_audience,
                public_key_path=self.settings.auth_local_public_key_path,
            )
        return BearerTokenValidator.for_entra(
            issuer=self.settings.auth_issuer,
            audience=self.settings.auth_audience,
            jwks_url=self.settings.auth_jwks_url,
        )

    def archive_for(self, tenant: str) -> DicomArchive:
        with self._lock:
            if tenant not in self._archives:
                self._archives[tenant] = _make_archive(
                    self.settings.tenant(tenant),
                    self.settings.managed_identity_client_id,
                )
            return self._archives[tenant]

    def fhir_for(self, tenant: str) -> FhirStore:
        with self._lock:
            if tenant not in self._fhir:
                self._fhir[tenant] = _make_fhir(
                    self.settings.tenant(tenant),
                    self.settings.managed_identity_client_id,
                )
            return self._fhir[tenant]

    def _azure_credential(self) -> Any:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(
            managed_identity_client_id=self.settings.managed_identity_client_id or None
        )


def _make_archive(tenant: TenantSettings, client_id: str) -> DicomArchive:
    from shared_code.adapters import dicomweb

    token_provider: Callable[[], str] | None = None
    if tenant.dicomweb_auth == "managed-identity":
        token_provider = dicomweb.managed_identity_token_provider(client_id)
    return dicomweb.DicomWebArchive(
        tenant.dicomweb_root,
        username=tenant.dicomweb_username if tenant.dicomweb_auth == "basic" else "",
        password=tenant.dicomweb_password if tenant.dicomweb_auth == "basic" else "",
        token_provider=token_provider,
    )


def _make_fhir(tenant: TenantSettings, client_id: str) -> FhirStore:
    from shared_code.adapters import fhir_http

    token_provider: Callable[[], str] | None = None
    if tenant.fhir_auth == "managed-identity":
        token_provider = fhir_http.managed_identity_token_provider(
            tenant.fhir_base_url, client_id
        )
    return fhir_http.FhirHttpStore(tenant.fhir_base_url, token_provider=token_provider)


_context: Context | None = None
_context_lock = threading.Lock()


def context() -> Context:
    """The process's context, built from the environment on first use."""
    global _context
    with _context_lock:
        if _context is None:
            _context = Context(load_settings())
        return _context


def reset_context() -> None:
    """Forget the process's context (tests that change the environment)."""
    global _context
    with _context_lock:
        _context = None
