"""What the local stack runs: service configs, secrets and the app's environment.

Everything here is derived from one :class:`Layout` (where ``.local/`` is) and one
:class:`Secrets` (generated once, persisted in ``.local/secrets.json``), so the same
inputs always give the same Orthanc, FHIR and app settings. No process is started here.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

HOST = "127.0.0.1"

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development account key (public, documented by Microsoft).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
    "K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}

# The Cosmos DB emulator's well-known key; cosmosdb-server accepts any key.
COSMOS_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DF2nqyh1gQLoBhuRFZxNGaL8uMMfw9DjRnQ"
    "ahS4TtQq6Kw=="
)
COSMOS_PORT = 18090

AUTH_ISSUER = "https://login.exchange.local/"
AUTH_AUDIENCE = "api://dicom-exchange"
DICOMWEB_USERNAME = "exchange"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

BLOB_CONTAINERS = ("uploads", "instances", "quarantine", "azure-webjobs-hosts")
QUEUES = (
    "instances",
    "dicom-events",
    "shares",
    "instances-deadletter",
    "dicom-events-deadletter",
    "shares-deadletter",
)


@dataclass(frozen=True)
class TenantSpec:
    """One tenant of the local stack: its archive, its FHIR server, its policy."""

    name: str
    orthanc_port: int
    fhir_port: int
    policy: str
    patient_identifier_system: str
    share_to: tuple[str, ...]

    @property
    def orthanc_url(self) -> str:
        return f"http://{HOST}:{self.orthanc_port}"

    @property
    def dicomweb_root(self) -> str:
        return f"{self.orthanc_url}/dicom-web"

    @property
    def fhir_base_url(self) -> str:
        return f"http://{HOST}:{self.fhir_port}/fhir"

    @property
    def env_suffix(self) -> str:
        """The tenant as shared_code/config.py spells it in secret setting names."""
        return self.name.upper().replace("-", "_")


TENANTS: tuple[TenantSpec, ...] = (
    TenantSpec(
        "trust-a",
        18042,
        18080,
        "clinical",
        "https://trust-a.example.nhs.uk/Id/local-patient-id",
        ("trust-b", "research"),
    ),
    TenantSpec(
        "trust-b",
        18043,
        18081,
        "clinical",
        "https://trust-b.example.nhs.uk/Id/local-patient-id",
        ("trust-a",),
    ),
    TenantSpec(
        "research",
        18044,
        18082,
        "research",
        "https://research.example.org/Id/pseudonym",
        (),
    ),
)


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps data, logs, pids and secrets (all under ``.local/``)."""

    root: Path

    @property
    def local(self) -> Path:
        return self.root / ".local"

    @property
    def run_dir(self) -> Path:
        return self.local / "run"

    @property
    def log_dir(self) -> Path:
        return self.local / "logs"

    @property
    def secrets_file(self) -> Path:
        return self.local / "secrets.json"

    @property
    def stack_file(self) -> Path:
        return self.local / "stack.json"

    @property
    def private_key(self) -> Path:
        return self.local / "auth" / "private.pem"

    @property
    def public_key(self) -> Path:
        return self.local / "auth" / "public.pem"

    @property
    def sqlite_path(self) -> Path:
        return self.local / "state" / "exchange.sqlite3"

    @property
    def azurite_dir(self) -> Path:
        return self.local / "azurite"

    def orthanc_dir(self, tenant: str) -> Path:
        return self.local / "orthanc" / tenant

    def fhir_dir(self, tenant: str) -> Path:
        return self.local / "fhir" / tenant

    def pid_file(self, service: str) -> Path:
        return self.run_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.log_dir / f"{service}.log"

    def node_bin(self, name: str) -> Path:
        return self.root / "node_modules" / ".bin" / name

    @property
    def sekmet_bin(self) -> Path:
        return self.root / ".venv" / "bin" / "sekmet"


@dataclass(frozen=True)
class Secrets:
    """Generated once per checkout; never committed (``.local/`` is git-ignored)."""

    dicomweb_passwords: dict[str, str]
    pseudonym_keys: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "dicomweb_passwords": self.dicomweb_passwords,
            "pseudonym_keys": self.pseudonym_keys,
        }


def load_or_create_secrets(layout: Layout) -> Secrets:
    """Read ``.local/secrets.json``, adding whatever a tenant lacks, and persist it."""
    stored: dict[str, Any] = {}
    if layout.secrets_file.exists():
        stored = json.loads(layout.secrets_file.read_text())
    passwords = dict(stored.get("dicomweb_passwords", {}))
    keys = dict(stored.get("pseudonym_keys", {}))

    for tenant in TENANTS:
        passwords.setdefault(tenant.name, secrets.token_urlsafe(24))
        if tenant.policy == "research":
            # 32 random bytes as 64 hex characters: the HMAC key of the pseudonyms.
            keys.setdefault(tenant.name, secrets.token_hex(32))

    result = Secrets(dicomweb_passwords=passwords, pseudonym_keys=keys)
    if result.to_json() != stored:
        write_private(layout.secrets_file, json.dumps(result.to_json(), indent=2))
    return result


def ensure_auth_keys(layout: Layout) -> None:
    """Create the RSA 2048 key pair that signs local bearer tokens, once."""
    if layout.private_key.exists() and layout.public_key.exists():
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    write_private(layout.private_key, private_pem.decode())
    layout.public_key.write_text(public_pem.decode())
    _log.info("generated local token signing keys in %s", layout.private_key.parent)


def azurite_connection_string() -> str:
    """Azurite's account with explicit 127.0.0.1 endpoints (not ``localhost``)."""
    endpoints = ";".join(
        f"{kind.capitalize()}Endpoint=http://{HOST}:{port}/{AZURITE_ACCOUNT}"
        for kind, port in AZURITE_PORTS.items()
    )
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};{endpoints};"
    )


def orthanc_config(layout: Layout, tenant: TenantSpec, password: str) -> dict[str, Any]:
    """The Orthanc 1.10 configuration of one tenant's DICOMweb archive."""
    data = layout.orthanc_dir(tenant.name)
    return {
        "Name": tenant.name,
        "StorageDirectory": str(data / "storage"),
        "IndexDirectory": str(data / "index"),
        "HttpServerEnabled": True,
        "HttpPort": tenant.orthanc_port,
        # Orthanc 1.10 binds every interface; this makes it refuse non-loopback peers.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {DICOMWEB_USERNAME: password},
        "DicomServerEnabled": False,
        "OverwriteInstances": False,
        "StableAge": 2,
        "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def fhir_settings(layout: Layout, tenant: TenantSpec) -> dict[str, Any]:
    """The sekmet-fhir settings of one tenant's FHIR R4 server (its Settings model)."""
    data = layout.fhir_dir(tenant.name)
    return {
        "host": HOST,
        "port": tenant.fhir_port,
        "base_url": tenant.fhir_base_url,
        "data_dir": str(data / "data"),
        "db_path": str(data / "data" / "sekmet.db"),
        "own_private_key_path": str(data / "keys" / "sekmet_private.pem"),
        "facility_name": f"DICOM Exchange local ({tenant.name})",
        "log_inbound": False,
        # Off: the simulator would answer our writes with Tasks and the like.
        "simulator": {"enabled": False},
        "validation": {"inbound": "strict"},
        "server_auth": {"types": ["none"]},
    }


def tenants_json(tenants: tuple[TenantSpec, ...] = TENANTS) -> str:
    """``EXCHANGE_TENANTS`` as shared_code/config.py reads it (no secrets in it)."""
    return json.dumps(
        {
            tenant.name: {
                "dicomweb_root": tenant.dicomweb_root,
                "dicomweb_auth": "basic",
                "dicomweb_username": DICOMWEB_USERNAME,
                "dicom_service_host": f"{HOST}:{tenant.orthanc_port}",
                "partition_name": "Microsoft.Default",
                "fhir_base_url": tenant.fhir_base_url,
                "fhir_auth": "none",
                "policy": tenant.policy,
                "patient_identifier_system": tenant.patient_identifier_system,
                "share_to": list(tenant.share_to),
            }
            for tenant in tenants
        },
        separators=(",", ":"),
    )


def app_env(layout: Layout, stack_secrets: Secrets) -> dict[str, str]:
    """The complete environment of the Function App run locally against this stack."""
    env = {
        "AzureWebJobsStorage": azurite_connection_string(),
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "EXCHANGE_BUS_KIND": "storage-queue",
        "EXCHANGE_STATE_KIND": "sqlite",
        "EXCHANGE_SQLITE_PATH": str(layout.sqlite_path.resolve()),
        "EXCHANGE_AUTH_MODE": "local",
        "EXCHANGE_AUTH_ISSUER": AUTH_ISSUER,
        "EXCHANGE_AUTH_AUDIENCE": AUTH_AUDIENCE,
        "EXCHANGE_AUTH_LOCAL_PUBLIC_KEY_PATH": str(layout.public_key.resolve()),
        "EXCHANGE_TENANTS": tenants_json(),
    }
    for tenant in TENANTS:
        env[f"EXCHANGE_DICOMWEB_PASSWORD_{tenant.env_suffix}"] = (
            stack_secrets.dicomweb_passwords[tenant.name]
        )
        if tenant.name in stack_secrets.pseudonym_keys:
            env[f"EXCHANGE_PSEUDONYM_KEY_{tenant.env_suffix}"] = (
                stack_secrets.pseudonym_keys[tenant.name]
            )
    return env


def stack_description(layout: Layout, stack_secrets: Secrets) -> dict[str, Any]:
    """The content of ``.local/stack.json`` (docs/ARCHITECTURE.md, "Local stack")."""
    return {
        "azurite": {
            "connection_string": azurite_connection_string(),
            "blob_url": f"http://{HOST}:{AZURITE_PORTS['blob']}/{AZURITE_ACCOUNT}",
            "queue_url": f"http://{HOST}:{AZURITE_PORTS['queue']}/{AZURITE_ACCOUNT}",
        },
        "tenants": {
            tenant.name: {
                "orthanc_url": tenant.orthanc_url,
                "dicomweb_root": tenant.dicomweb_root,
                "username": DICOMWEB_USERNAME,
                "password": stack_secrets.dicomweb_passwords[tenant.name],
                "fhir_base_url": tenant.fhir_base_url,
            }
            for tenant in TENANTS
        },
        "cosmos": {"endpoint": f"https://{HOST}:{COSMOS_PORT}", "key": COSMOS_KEY},
        "auth": {
            "private_key_path": str(layout.private_key.resolve()),
            "public_key_path": str(layout.public_key.resolve()),
            "issuer": AUTH_ISSUER,
            "audience": AUTH_AUDIENCE,
        },
        "app_env": app_env(layout, stack_secrets),
    }


def write_service_configs(layout: Layout, stack_secrets: Secrets) -> None:
    """Write each tenant's Orthanc JSON and sekmet settings.yaml under ``.local/``."""
    import yaml

    for tenant in TENANTS:
        orthanc_dir = layout.orthanc_dir(tenant.name)
        for sub in ("storage", "index"):
            (orthanc_dir / sub).mkdir(parents=True, exist_ok=True)
        config = orthanc_config(
            layout, tenant, stack_secrets.dicomweb_passwords[tenant.name]
        )
        write_private(orthanc_dir / "orthanc.json", json.dumps(config, indent=2))

        fhir_dir = layout.fhir_dir(tenant.name)
        for sub in ("data", "keys"):
            (fhir_dir / sub).mkdir(parents=True, exist_ok=True)
        (fhir_dir / "settings.yaml").write_text(
            yaml.safe_dump(fhir_settings(layout, tenant), sort_keys=False)
        )


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
