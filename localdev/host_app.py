"""Loading a v2 function app and reading its triggers, as the Functions host indexes it.

The host imports the app module once, reads ``app.get_functions()`` once (the SDK
refuses a second call: it records every function name and then rejects duplicates),
and turns each function's trigger binding into a small description the listeners in
``localdev.host_*`` drive. Setting references (``%NAME%``) resolve from the app
environment, as the real host resolves them from app settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import azure.functions as func
from azure.functions.decorators.blob import BlobTrigger
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.servicebus import ServiceBusQueueTrigger
from azure.functions.decorators.timer import TimerTrigger

_log = logging.getLogger(__name__)

# Bindings that need nothing from the host besides the trigger's own argument.
_PASSIVE_BINDINGS = {"http"}

# get_functions() can be called once per app object; keep what it returned.
_FUNCTIONS_BY_APP: dict[int, list[Any]] = {}


class HostError(RuntimeError):
    """The app cannot be hosted locally: the message names the function and thing."""


@dataclass(frozen=True)
class BlobFunction:
    name: str
    param: str
    container: str
    pattern: str  # the path inside the container, e.g. "{tenant}/{name}"
    connection: str
    call: Callable[..., Any]

    @property
    def prefix(self) -> str:
        """The literal start of the pattern: the blob listing's name prefix."""
        return self.pattern.split("{", 1)[0]

    def match(self, blob_name: str) -> dict[str, str] | None:
        """The pattern's parameters for a blob name, or None when it does not match."""
        found = _blob_regex(self.pattern).fullmatch(blob_name)
        return found.groupdict() if found else None


@dataclass(frozen=True)
class QueueFunction:
    name: str
    param: str
    queue_name: str
    connection: str
    call: Callable[..., Any]


@dataclass(frozen=True)
class HttpFunction:
    name: str
    param: str
    route: str
    methods: frozenset[str] | None  # None: every method
    auth_level: str
    call: Callable[..., Any]
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """Route parameters when the request (path below the prefix) is this route."""
        if self.methods is not None and method.upper() not in self.methods:
            return None
        found = self.regex.fullmatch(path.strip("/"))
        if not found:
            return None
        return {k: v for k, v in found.groupdict().items() if v is not None}


@dataclass(frozen=True)
class TimerFunction:
    name: str
    param: str
    schedule: str
    run_on_startup: bool
    call: Callable[..., Any]


HostedFunction = BlobFunction | QueueFunction | HttpFunction | TimerFunction
_F = TypeVar("_F", BlobFunction, QueueFunction, HttpFunction, TimerFunction)


@dataclass(frozen=True)
class LoadedApp:
    """The functions of one app module and its host.json settings."""

    module: str
    functions: tuple[HostedFunction, ...]
    route_prefix: str

    def of_kind(self, kind: type[_F]) -> list[_F]:
        return [f for f in self.functions if isinstance(f, kind)]


def apply_environment(app_env: Mapping[str, str]) -> None:
    """Put the app's settings into os.environ, where the app reads them."""
    for name, value in app_env.items():
        os.environ[name] = str(value)


def load_app(module_name: str, environ: Mapping[str, str]) -> LoadedApp:
    """Import the app module and describe every function it registers."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise HostError(f"app module {module_name!r} not found on sys.path")
    host_json = Path(spec.origin).parent / "host.json"

    module = importlib.import_module(module_name)
    app = getattr(module, "app", None)
    if not isinstance(app, func.FunctionApp):
        raise HostError(f"{module_name}.app is not an azure.functions.FunctionApp")
    if id(app) not in _FUNCTIONS_BY_APP:
        _FUNCTIONS_BY_APP[id(app)] = list(app.get_functions())

    functions = tuple(describe_function(f, environ) for f in _FUNCTIONS_BY_APP[id(app)])
    return LoadedApp(module_name, functions, read_route_prefix(host_json))


def read_route_prefix(host_json: Path) -> str:
    """extensions.http.routePrefix of host.json; "api" when absent."""
    if not host_json.exists():
        return "api"
    settings = json.loads(host_json.read_text())
    prefix = settings.get("extensions", {}).get("http", {}).get("routePrefix", "api")
    return str(prefix).strip("/")


def describe_function(function: Any, environ: Mapping[str, str]) -> HostedFunction:
    """One function's trigger, with setting references resolved."""
    name = function.get_function_name()
    trigger = function.get_trigger()
    call = _callable(function.get_user_function())

    for binding in function.get_bindings():
        if binding is not trigger and binding.type not in _PASSIVE_BINDINGS:
            raise HostError(
                f"function {name!r}: binding type {binding.type!r} is not supported "
                "by the local host; use the project's adapters instead"
            )

    if isinstance(trigger, BlobTrigger):
        path = resolve_setting(trigger.path, environ)
        container, _, pattern = path.partition("/")
        if not container or not pattern:
            raise HostError(f"function {name!r}: blob path {path!r} lacks a pattern")
        return BlobFunction(
            name, trigger.name, container, pattern, trigger.connection, call
        )
    if isinstance(trigger, ServiceBusQueueTrigger):
        return QueueFunction(
            name,
            trigger.name,
            resolve_setting(trigger.queue_name, environ),
            trigger.connection,
            call,
        )
    if isinstance(trigger, HttpTrigger):
        route = (trigger.route or name).strip("/")
        methods = (
            frozenset(str(m).upper() for m in trigger.methods)
            if trigger.methods
            else None
        )
        return HttpFunction(
            name,
            trigger.name,
            route,
            methods,
            str(trigger.auth_level or "function").lower(),
            call,
            route_regex(route),
        )
    if isinstance(trigger, TimerTrigger):
        return TimerFunction(
            name,
            trigger.name,
            resolve_setting(trigger.schedule, environ),
            bool(trigger.run_on_startup),
            call,
        )
    kind = trigger.type if trigger is not None else "none"
    raise HostError(
        f"function {name!r}: trigger type {kind!r} is not supported by the local "
        "host (supported: blobTrigger, serviceBusTrigger on a queue, httpTrigger, "
        "timerTrigger)"
    )


def resolve_setting(value: str, environ: Mapping[str, str]) -> str:
    """Replace %NAME% references with app settings, as the Functions host does."""

    def lookup(found: re.Match[str]) -> str:
        setting = found.group(1)
        if setting not in environ:
            raise HostError(
                f"app setting {setting!r} (referenced as %{setting}%) is not set"
            )
        return environ[setting]

    return re.sub(r"%([A-Za-z0-9_.:-]+)%", lookup, value)


def route_regex(route: str) -> re.Pattern[str]:
    """A regex for an ASP.NET-style route template: {p}, {p:constraint}, {p?}, {*p}."""
    parts = []
    for segment in route.strip("/").split("/"):
        pieces = re.split(r"(\{[^}]+\})", segment)
        regex = ""
        optional = False
        for piece in pieces:
            if not (piece.startswith("{") and piece.endswith("}")):
                regex += re.escape(piece)
                continue
            inner = piece[1:-1]
            catch_all = inner.startswith("*")
            inner = inner.lstrip("*")
            name, _, constraint = inner.partition(":")
            optional = name.endswith("?") or constraint.endswith("?")
            name = name.rstrip("?")
            constraint = constraint.rstrip("?").split("(", 1)[0].lower()
            body = ".*" if catch_all else _CONSTRAINTS.get(constraint, r"[^/]+")
            regex += f"(?P<{name}>{body})"
        parts.append((regex, optional))

    pattern = ""
    for index, (regex, optional) in enumerate(parts):
        sep = "/" if index else ""
        pattern += f"(?:{sep}{regex})?" if optional else f"{sep}{regex}"
    return re.compile(pattern, re.IGNORECASE)


_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?"
    r"[0-9A-Fa-f]{12}",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:true|false)",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
}


def _blob_regex(pattern: str) -> re.Pattern[str]:
    # A parameter stops at "/" except the last, which takes the rest of the name
    # (the real host binds {name} across virtual folders).
    names = re.findall(r"\{([^}]+)\}", pattern) or [""]
    regex = ""
    for piece in re.split(r"(\{[^}]+\})", pattern):
        if piece.startswith("{") and piece.endswith("}"):
            name = piece[1:-1]
            body = ".+" if name == names[-1] else "[^/]+"
            regex += f"(?P<{name}>{body})"
        else:
            regex += re.escape(piece)
    return re.compile(regex)


def _callable(user_function: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.iscoroutinefunction(user_function):
        return user_function

    def run(**kwargs: Any) -> Any:
        return asyncio.run(user_function(**kwargs))

    return run


@dataclass(frozen=True)
class Invocation:
    """One finished invocation, as the host logged it (no message bodies)."""

    function: str
    outcome: str  # succeeded | failed | dead-lettered | poisoned | skipped
    duration: float
    trigger_id: str  # message id, blob name, HTTP path or schedule time
    delivery_count: int | None = None
    error: str | None = None  # exception class name
    next_visible_on: Any = None  # when an abandoned message comes back (Azurite's)


class Recorder:
    """Logs one line per invocation and keeps the records for tests and drains."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Invocation] = []
        self.activity = 0

    def started(self, *, activity: bool = True) -> None:
        with self._lock:
            self.activity += activity

    def record(self, invocation: Invocation, *, activity: bool = True) -> None:
        """Log and keep one invocation; timers pass activity=False (never idle else)."""
        with self._lock:
            self._records.append(invocation)
            self.activity += activity
        _log.info(
            "function=%s outcome=%s duration_ms=%d trigger_hash=%s delivery=%s "
            "error=%s",
            invocation.function,
            invocation.outcome,
            invocation.duration * 1000,
            # Blob names and routes can carry identifiers: log them hashed.
            hashlib.sha256(invocation.trigger_id.encode()).hexdigest()[:12],
            invocation.delivery_count,
            invocation.error,
        )

    def records(self) -> list[Invocation]:
        with self._lock:
            return list(self._records)
