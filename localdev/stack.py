"""The local stack: ``python -m localdev.stack start|stop|status [--only NAMES]``.

Runs Azurite, one Orthanc + DICOMweb and one sekmet-fhir server per tenant, and
cosmosdb-server, all on 127.0.0.1 with data, logs, pids and generated secrets under
``.local/``; then creates the blob containers and queues and writes
``.local/stack.json`` (docs/ARCHITECTURE.md, "Local stack"). Install what it needs
with ``scripts/install.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from localdev import stack_config as cfg
from localdev import stack_proc as proc

_log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
HEALTH_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0


class StackError(RuntimeError):
    """The stack cannot start as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Service:
    """One server process of the stack."""

    name: str
    group: str
    ports: tuple[int, ...]
    argv: tuple[str, ...]
    cwd: Path
    marker: str
    binary: Path
    install_hint: str
    healthy: Callable[[], bool]


def services(layout: cfg.Layout, stack_secrets: cfg.Secrets) -> list[Service]:
    """Every service of the stack, in start order."""
    found: list[Service] = []

    azurite = layout.node_bin("azurite")
    found.append(
        Service(
            name="azurite",
            group="azurite",
            ports=tuple(cfg.AZURITE_PORTS.values()),
            argv=(
                str(azurite),
                "--blobHost",
                cfg.HOST,
                "--queueHost",
                cfg.HOST,
                "--tableHost",
                cfg.HOST,
                "--location",
                str(layout.azurite_dir),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--loose",
            ),
            cwd=layout.azurite_dir,
            marker="azurite",
            binary=azurite,
            install_hint="the npm package azurite",
            healthy=_azurite_healthy,
        )
    )

    orthanc = Path(shutil.which("Orthanc") or "/usr/sbin/Orthanc")
    for tenant in cfg.TENANTS:
        config_path = layout.orthanc_dir(tenant.name) / "orthanc.json"
        found.append(
            Service(
                name=f"orthanc-{tenant.name}",
                group="orthanc",
                ports=(tenant.orthanc_port,),
                argv=(str(orthanc), str(config_path)),
                cwd=layout.orthanc_dir(tenant.name),
                marker=str(config_path),
                binary=orthanc,
                install_hint="the Debian packages orthanc and orthanc-dicomweb",
                healthy=_orthanc_check(
                    tenant, stack_secrets.dicomweb_passwords[tenant.name]
                ),
            )
        )

    for tenant in cfg.TENANTS:
        settings_path = layout.fhir_dir(tenant.name) / "settings.yaml"
        found.append(
            Service(
                name=f"fhir-{tenant.name}",
                group="fhir",
                ports=(tenant.fhir_port,),
                argv=(str(layout.sekmet_bin), "serve", "--config", str(settings_path)),
                cwd=layout.fhir_dir(tenant.name),
                marker=str(settings_path),
                binary=layout.sekmet_bin,
                install_hint="the PyPI package sekmet-fhir (requirements-dev.txt)",
                healthy=_fhir_check(tenant),
            )
        )

    cosmos = layout.node_bin("cosmosdb-server")
    found.append(
        Service(
            name="cosmos",
            group="cosmos",
            ports=(cfg.COSMOS_PORT,),
            argv=(str(cosmos), "--port", str(cfg.COSMOS_PORT), "--host", cfg.HOST),
            cwd=layout.local,
            marker="cosmosdb-server",
            binary=cosmos,
            install_hint="the npm package @vercel/cosmosdb-server",
            healthy=_cosmos_healthy,
        )
    )
    return found


def start(layout: cfg.Layout, only: Sequence[str] = ()) -> bool:
    """Start what is not running, wait until healthy, prepare Azurite, describe it.

    Returns True when every selected service is healthy.
    """
    for sub in (layout.run_dir, layout.log_dir, layout.azurite_dir):
        sub.mkdir(parents=True, exist_ok=True)
    layout.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    stack_secrets = cfg.load_or_create_secrets(layout)
    cfg.ensure_auth_keys(layout)
    cfg.write_service_configs(layout, stack_secrets)
    selected = _select(services(layout, stack_secrets), only)

    to_start = _check_can_start(layout, selected)
    for service in to_start:
        pid = proc.spawn(
            service.argv,
            cwd=service.cwd,
            log_file=layout.log_file(service.name),
            pid_file=layout.pid_file(service.name),
            env=_service_env(),
        )
        print(f"started {service.name} (pid {pid})")

    healthy = _wait_healthy(layout, selected)
    if healthy.get("azurite"):
        create_azurite_resources(cfg.azurite_connection_string())
    _write_private_json(layout.stack_file, cfg.stack_description(layout, stack_secrets))
    print_status(layout, selected, healthy)
    print(f"stack description: {layout.stack_file}")
    return all(healthy.values())


def stop(layout: cfg.Layout, only: Sequence[str] = ()) -> bool:
    """Stop the services we started; a service not running is no error."""
    stack_secrets = cfg.load_or_create_secrets(layout)
    running = {}
    for service in _select(services(layout, stack_secrets), only):
        pid = proc.our_pid(layout.pid_file(service.name), service.marker)
        if pid is not None:
            running[service.name] = pid

    # All at once: Azurite alone takes about 2 s to exit.
    gone = proc.terminate(list(running.values()), STOP_DEADLINE_S)
    for name, pid in running.items():
        if gone[pid]:
            layout.pid_file(name).unlink(missing_ok=True)
            print(f"stopped {name} (pid {pid})")
        else:
            print(f"could not stop {name} (pid {pid})", file=sys.stderr)
    return all(gone.values())


def status(layout: cfg.Layout, only: Sequence[str] = ()) -> bool:
    """Print one line per service; True when every one is running and healthy."""
    stack_secrets = cfg.load_or_create_secrets(layout)
    selected = _select(services(layout, stack_secrets), only)
    healthy = {
        service.name: proc.our_pid(layout.pid_file(service.name), service.marker)
        is not None
        and service.healthy()
        for service in selected
    }
    print_status(layout, selected, healthy)
    return all(healthy.values())


def print_status(
    layout: cfg.Layout, selected: Sequence[Service], healthy: dict[str, bool]
) -> None:
    print(f"{'service':<18} {'port':<18} {'pid':>8}  state")
    for service in selected:
        pid = proc.read_pid(layout.pid_file(service.name))
        ports = ",".join(str(port) for port in service.ports)
        state = "healthy" if healthy.get(service.name) else "DOWN"
        print(f"{service.name:<18} {ports:<18} {pid or '-':>8}  {state}")


def create_azurite_resources(connection_string: str) -> None:
    """Create the blob containers and queues the app and its local host use."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    blobs = BlobServiceClient.from_connection_string(connection_string)
    for container in cfg.BLOB_CONTAINERS:
        with contextlib.suppress(ResourceExistsError):
            blobs.create_container(container)

    queues = QueueServiceClient.from_connection_string(connection_string)
    for queue in cfg.QUEUES:
        with contextlib.suppress(ResourceExistsError):
            queues.create_queue(queue)


def _select(all_services: list[Service], only: Sequence[str]) -> list[Service]:
    if not only:
        return all_services
    known = {s.name for s in all_services} | {s.group for s in all_services}
    unknown = sorted(set(only) - known)
    if unknown:
        raise StackError(
            f"unknown service(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    return [s for s in all_services if s.name in only or s.group in only]


def _check_can_start(layout: cfg.Layout, selected: list[Service]) -> list[Service]:
    """The services to start; fails before starting any when one cannot start."""
    to_start = []
    for service in selected:
        if proc.our_pid(layout.pid_file(service.name), service.marker) is not None:
            continue
        if not service.binary.exists():
            raise StackError(
                f"{service.name}: {service.binary} is missing; install "
                f"{service.install_hint} with scripts/install.sh"
            )
        if (
            service.name.startswith("orthanc")
            and not Path(cfg.ORTHANC_DICOMWEB_PLUGIN).exists()
        ):
            raise StackError(
                f"{service.name}: {cfg.ORTHANC_DICOMWEB_PLUGIN} is missing; install "
                "the Debian package orthanc-dicomweb with scripts/install.sh"
            )
        for port in service.ports:
            if proc.port_in_use(port):
                raise StackError(
                    f"port {port} (for {service.name}) is taken by a process that "
                    "is not ours; stop it or free the port"
                )
        to_start.append(service)
    return to_start


def _wait_healthy(layout: cfg.Layout, selected: list[Service]) -> dict[str, bool]:
    healthy = dict.fromkeys((s.name for s in selected), False)
    end = time.monotonic() + HEALTH_DEADLINE_S
    while True:
        for service in selected:
            if healthy[service.name]:
                continue
            pid = proc.our_pid(layout.pid_file(service.name), service.marker)
            if pid is None:
                # It exited: waiting longer will not help.
                healthy[service.name] = False
                continue
            healthy[service.name] = service.healthy()
        pending = [
            s
            for s in selected
            if not healthy[s.name] and layout.pid_file(s.name).exists()
        ]
        if not pending or time.monotonic() > end:
            break
        time.sleep(0.25)

    for service in selected:
        if not healthy[service.name]:
            print(
                f"{service.name} is not healthy; see {layout.log_file(service.name)}",
                file=sys.stderr,
            )
    return healthy


def _service_env() -> dict[str, str]:
    env = dict(os.environ)
    # Keep a developer's activated venv or Node options from leaking into servers.
    for name in ("SEKMET_CONFIG", "SEKMET_PORT", "SEKMET_DB", "SEKMET_BASE_URL"):
        env.pop(name, None)
    return env


def _http_ok(url: str, **kwargs: object) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2, **kwargs)  # type: ignore[arg-type]
    except requests.RequestException:
        return None


def _azurite_healthy() -> bool:
    # Azurite has no anonymous 200 endpoint; an answer that Azurite signs is enough.
    for kind, port in cfg.AZURITE_PORTS.items():
        answer = _http_ok(f"http://{cfg.HOST}:{port}/{cfg.AZURITE_ACCOUNT}")
        if answer is None or "Azurite" not in answer.headers.get("Server", ""):
            _log.debug("azurite %s not answering yet", kind)
            return False
    return True


def _orthanc_check(tenant: cfg.TenantSpec, password: str) -> Callable[[], bool]:
    def healthy() -> bool:
        answer = _http_ok(
            f"{tenant.orthanc_url}/system", auth=(cfg.DICOMWEB_USERNAME, password)
        )
        return answer is not None and answer.status_code == 200

    return healthy


def _fhir_check(tenant: cfg.TenantSpec) -> Callable[[], bool]:
    def healthy() -> bool:
        answer = _http_ok(f"{tenant.fhir_base_url}/metadata")
        return answer is not None and answer.status_code == 200

    return healthy


def _cosmos_healthy() -> bool:
    import urllib3

    # cosmosdb-server serves a self-signed certificate.
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    answer = _http_ok(f"https://{cfg.HOST}:{cfg.COSMOS_PORT}/", verify=False)
    return answer is not None and answer.status_code == 200


def _write_private_json(path: Path, content: dict[str, object]) -> None:
    cfg.write_private(path, json.dumps(content, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localdev.stack", description=__doc__
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated services or groups (azurite, orthanc, fhir, cosmos, "
        "orthanc-trust-a, ...)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # The storage SDK logs every request and response at INFO.
    logging.getLogger("azure").setLevel(logging.WARNING)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    layout = cfg.Layout(ROOT)

    try:
        if args.command == "start":
            ok = start(layout, only)
        elif args.command == "stop":
            ok = stop(layout, only)
        else:
            ok = status(layout, only)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
