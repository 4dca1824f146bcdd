"""Detached child processes with pid files: start, recognise, stop; and port checks.

A service is "ours" when its pid file names a live process whose command line carries
the service's marker (its config path or binary name), so a recycled pid or a stranger
on our port is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_log = logging.getLogger(__name__)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on, or holds, ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        if probe.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR so a closed connection's TIME_WAIT does not count as taken;
        # a socket merely bound (not listening) there still makes bind() fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def process_alive(pid: int) -> bool:
    """True for a running process (a zombie awaiting its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def our_pid(pid_file: Path, marker: str) -> int | None:
    """The pid of our running service, or None; a stale pid file is removed."""
    pid = read_pid(pid_file)
    if pid is None:
        if pid_file.exists():
            pid_file.unlink()
        return None
    if process_alive(pid) and marker in process_cmdline(pid):
        return pid
    _log.info("removing stale pid file %s (pid %s)", pid_file, pid)
    pid_file.unlink(missing_ok=True)
    return None


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_file: Path,
    pid_file: Path,
    env: dict[str, str] | None = None,
) -> int:
    """Start ``argv`` in its own session (no terminal), logging to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start\n".encode())
        log.flush()
        child = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    pid_file.write_text(f"{child.pid}\n")
    # The child outlives us; drop the handle so no ResourceWarning names it.
    child.returncode = 0
    return child.pid


def terminate(pids: Sequence[int], deadline_s: float = 20.0) -> dict[int, bool]:
    """SIGTERM the process groups of ``pids`` at once, wait, SIGKILL past the deadline.

    Returns, for each pid, whether the process is gone.
    """
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    alive = _wait_gone(pids, deadline_s)

    for pid in alive:
        _log.warning(
            "pid %s ignored SIGTERM for %.0f s; sending SIGKILL", pid, deadline_s
        )
        _signal_group(pid, signal.SIGKILL)
    still_alive = _wait_gone(alive, 5.0)
    return {pid: pid not in still_alive for pid in pids}


def _wait_gone(pids: Sequence[int], deadline_s: float) -> list[int]:
    """Wait until every pid has exited or the deadline passed; the ones still alive."""
    end = time.monotonic() + deadline_s
    alive = [pid for pid in pids if process_alive(pid)]
    while alive and time.monotonic() < end:
        time.sleep(0.1)
        alive = [pid for pid in alive if process_alive(pid)]
    return alive


def _signal_group(pid: int, signum: int) -> None:
    # Each service leads its own session (start_new_session), so its group id is its
    # pid; signalling the group also reaches any helper it forked.
    with contextlib.suppress(ProcessLookupError):
        try:
            os.killpg(pid, signum)
        except PermissionError:
            os.kill(pid, signum)
