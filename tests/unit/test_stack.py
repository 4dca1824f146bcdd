"""The local stack's pure parts: generated configs, secrets, settings, port checks."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
import yaml
from sekmet.config import Settings as SekmetSettings

from localdev import stack, stack_proc
from localdev import stack_config as cfg
from shared_code.config import load_settings

ROOT = Path(__file__).resolve().parents[2]

AZURE_ONLY_NAMES = (
    "ServiceBusConnection__fullyQualifiedNamespace",
    "COSMOS_ENDPOINT",
    "COSMOS_DATABASE",
    "EXCHANGE_AUTH_JWKS_URL",
    "AzureWebJobsStorage__blobServiceUri",
    "AZURE_CLIENT_ID",
    "EXCHANGE_MAX_UPLOAD_BYTES",
    "EXCHANGE_MAX_INSTANCE_BYTES",
    "EXCHANGE_MAX_ZIP_MEMBERS",
    "EXCHANGE_MAX_ZIP_RATIO",
)


@pytest.fixture
def layout(tmp_path: Path) -> cfg.Layout:
    return cfg.Layout(tmp_path)


def test_app_env_loads_with_the_apps_settings(layout: cfg.Layout) -> None:
    secrets = cfg.load_or_create_secrets(layout)

    settings = load_settings(cfg.app_env(layout, secrets))

    assert settings.bus_kind == "storage-queue"
    assert settings.state_kind == "sqlite"
    assert settings.auth_mode == "local"
    assert set(settings.tenants) == {"trust-a", "trust-b", "research"}
    research = settings.tenant("research")
    assert research.policy == "research"
    assert len(research.pseudonym_key) == 64
    assert settings.tenant("trust-a").share_to == ("trust-b", "research")
    assert settings.tenant("trust-a").dicomweb_password
    assert (
        settings.tenant_for_dicom_service("127.0.0.1:18043", "Microsoft.Default").name
        == "trust-b"
    )


def test_app_env_uses_explicit_loopback_endpoints(layout: cfg.Layout) -> None:
    env = cfg.app_env(layout, cfg.load_or_create_secrets(layout))

    connection = env["AzureWebJobsStorage"]
    assert "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1" in connection
    assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1" in connection
    assert "localhost" not in connection
    assert Path(env["EXCHANGE_SQLITE_PATH"]).is_absolute()
    assert Path(env["EXCHANGE_AUTH_LOCAL_PUBLIC_KEY_PATH"]).is_absolute()


def test_secrets_are_generated_once_and_kept_private(layout: cfg.Layout) -> None:
    first = cfg.load_or_create_secrets(layout)
    second = cfg.load_or_create_secrets(layout)

    assert first == second
    assert int(first.pseudonym_keys["research"], 16) >= 0
    assert len(first.pseudonym_keys["research"]) == 64
    assert set(first.pseudonym_keys) == {"research"}
    assert len(set(first.dicomweb_passwords.values())) == 3
    mode = stat.S_IMODE(layout.secrets_file.stat().st_mode)
    assert mode == 0o600


def test_auth_keys_are_generated_once(layout: cfg.Layout) -> None:
    cfg.ensure_auth_keys(layout)
    private_pem = layout.private_key.read_bytes()

    cfg.ensure_auth_keys(layout)

    assert layout.private_key.read_bytes() == private_pem
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert layout.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_stack_description_has_the_documented_shape(layout: cfg.Layout) -> None:
    secrets = cfg.load_or_create_secrets(layout)

    described = cfg.stack_description(layout, secrets)

    assert set(described) == {"azurite", "tenants", "cosmos", "auth", "app_env"}
    assert set(described["azurite"]) == {"connection_string", "blob_url", "queue_url"}
    assert described["tenants"]["trust-a"] == {
        "orthanc_url": "http://127.0.0.1:18042",
        "dicomweb_root": "http://127.0.0.1:18042/dicom-web",
        "username": "exchange",
        "password": secrets.dicomweb_passwords["trust-a"],
        "fhir_base_url": "http://127.0.0.1:18080/fhir",
    }
    assert described["cosmos"]["endpoint"] == "https://127.0.0.1:18090"
    assert described["auth"]["audience"] == "api://dicom-exchange"
    assert (
        described["app_env"]["EXCHANGE_DICOMWEB_PASSWORD_TRUST_A"]
        == secrets.dicomweb_passwords["trust-a"]
    )


def test_service_configs_are_written_per_tenant(layout: cfg.Layout) -> None:
    secrets = cfg.load_or_create_secrets(layout)

    cfg.write_service_configs(layout, secrets)

    orthanc = json.loads((layout.orthanc_dir("research") / "orthanc.json").read_text())
    assert orthanc["Name"] == "research"
    assert orthanc["HttpPort"] == 18044
    assert orthanc["RemoteAccessAllowed"] is False
    assert orthanc["DicomServerEnabled"] is False
    assert orthanc["OverwriteInstances"] is False
    assert orthanc["RegisteredUsers"] == {
        "exchange": secrets.dicomweb_passwords["research"]
    }
    assert orthanc["DicomWeb"] == {"Enable": True, "Root": "/dicom-web/"}
    assert orthanc["StorageDirectory"].startswith(str(layout.local))

    raw = yaml.safe_load((layout.fhir_dir("trust-b") / "settings.yaml").read_text())
    fhir = SekmetSettings.model_validate(raw)
    assert (fhir.host, fhir.port) == ("127.0.0.1", 18081)
    assert fhir.base_url == "http://127.0.0.1:18081/fhir"
    assert fhir.simulator.enabled is False
    assert fhir.log_inbound is False
    assert fhir.validation.inbound == "strict"
    assert fhir.server_auth.types == ["none"]
    assert fhir.database.startswith(str(layout.local))


def test_sample_settings_name_every_setting() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())
    values = sample["Values"]
    layout = cfg.Layout(ROOT)
    secrets = cfg.Secrets({t.name: "x" for t in cfg.TENANTS}, {"research": "0" * 64})

    assert sample["IsEncrypted"] is False
    assert set(cfg.app_env(layout, secrets)) <= set(values)
    assert set(AZURE_ONLY_NAMES) <= set(values)
    filled = {k: "0" * 64 if v == "<set me>" else v for k, v in values.items()}
    assert load_settings(filled).tenant("research").policy == "research"


def test_a_bound_port_is_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]

        assert stack_proc.port_in_use(port)

        holder.listen()
        assert stack_proc.port_in_use(port)

    assert not stack_proc.port_in_use(port)


def test_start_refuses_a_port_taken_by_a_stranger(layout: cfg.Layout) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = _service("orthanc-trust-a", port, Path(sys.executable))

        with pytest.raises(stack.StackError, match=rf"port {port} .*orthanc-trust-a"):
            stack._check_can_start(layout, [service])


def test_start_names_the_package_of_a_missing_binary(layout: cfg.Layout) -> None:
    secrets = cfg.load_or_create_secrets(layout)
    azurite = stack._select(stack.services(layout, secrets), ["azurite"])

    with pytest.raises(stack.StackError, match=r"npm package azurite.*install\.sh"):
        stack._check_can_start(layout, azurite)


def test_only_selects_by_name_or_group(layout: cfg.Layout) -> None:
    secrets = cfg.load_or_create_secrets(layout)
    every = stack.services(layout, secrets)

    chosen = stack._select(every, ["azurite", "orthanc", "fhir-research"])

    assert [s.name for s in chosen] == [
        "azurite",
        "orthanc-trust-a",
        "orthanc-trust-b",
        "orthanc-research",
        "fhir-research",
    ]
    with pytest.raises(stack.StackError, match="unknown service"):
        stack._select(every, ["postgres"])


def test_a_stale_pid_file_is_removed(layout: cfg.Layout) -> None:
    pid_file = layout.pid_file("cosmos")
    pid_file.parent.mkdir(parents=True)

    pid_file.write_text(f"{os.getpid()}\n")
    assert stack_proc.our_pid(pid_file, "no-such-marker-in-pytest") is None
    assert not pid_file.exists()

    pid_file.write_text(f"{os.getpid()}\n")
    assert stack_proc.our_pid(pid_file, Path(sys.executable).name) == os.getpid()
    assert pid_file.exists()


def _service(name: str, port: int, binary: Path) -> stack.Service:
    return stack.Service(
        name=name,
        group=name.split("-")[0],
        ports=(port,),
        argv=(str(binary),),
        cwd=Path("."),
        marker=name,
        binary=binary,
        install_hint="nothing",
        healthy=lambda: False,
    )
