"""The local host's command line: it runs until SIGTERM and exits 0, or drains."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.fixtures.hostapp.function_app"


def write_stack(stack: dict[str, Any], tmp_path: Path) -> Path:
    app_env = {**stack["app_env"], "HOSTAPP_QUEUE": "hostapp-work"}
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({**stack, "app_env": app_env}))
    return path


def host_command(stack_file: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "localdev.host", "--stack", str(stack_file),
        "--app", APP, "--http-port", "0", "--state-dir", str(tmp_path / "state"),
        "--host-id", f"cli-{uuid.uuid4().hex[:8]}", "--poll-interval", "0.2",
        "--no-dicom-events", *extra,
    ]  # fmt: skip


def test_sigterm_stops_the_host_cleanly(stack: dict[str, Any], tmp_path: Path) -> None:
    stack_file = write_stack(stack, tmp_path)
    process = subprocess.Popen(
        host_command(stack_file, tmp_path),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "local host started" in line:
            break
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)

    assert process.returncode == 0, errors
    assert "local host stopped" in errors


def test_drain_processes_waiting_blobs_and_exits(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    connection = stack["app_env"]["AzureWebJobsStorage"]
    blobs = BlobServiceClient.from_connection_string(connection)
    for container in ("hostapp-in", "hostapp-out"):
        with contextlib.suppress(ResourceExistsError):
            blobs.create_container(container)
    queues = QueueServiceClient.from_connection_string(connection)
    with contextlib.suppress(ResourceExistsError):
        queues.create_queue("hostapp-work")
    # A drain waits for every message, also one waiting out another test's retry.
    queues.get_queue_client("hostapp-work").clear_messages()
    inbox = blobs.get_container_client("hostapp-in")
    for blob in inbox.list_blobs():  # only this test's blob, no other's retries
        inbox.delete_blob(blob.name)
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    blobs.get_blob_client("hostapp-in", f"{tenant}/a.dcm").upload_blob(b"abcd")

    result = subprocess.run(
        host_command(write_stack(stack, tmp_path), tmp_path, "--drain"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    out = blobs.get_container_client("hostapp-out")
    assert list(out.list_blobs(name_starts_with=f"blob/hostapp-in/{tenant}/a.dcm/4/"))
    assert f"{tenant}" not in result.stderr  # blob names are logged hashed
