"""HTTP triggers of the local host: a stdlib threading server under the route prefix.

Requests are matched against the functions' route templates below host.json's
``extensions.http.routePrefix``; no match is 404. The function gets a
``func.HttpRequest`` with ``route_params`` and its ``func.HttpResponse`` goes back to
the caller. An exception is logged and answered with a generic 500, never a trace.
Auth levels are not enforced, as Core Tools does not enforce keys locally.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func

from localdev.host_app import HttpFunction, Invocation, Recorder

_log = logging.getLogger(__name__)


class HttpListener:
    """Serves the HTTP-triggered functions on 127.0.0.1."""

    def __init__(
        self,
        functions: list[HttpFunction],
        recorder: Recorder,
        *,
        port: int,
        route_prefix: str,
        host: str = "127.0.0.1",
    ) -> None:
        self._functions = functions
        self._recorder = recorder
        self._prefix = "/" + route_prefix.strip("/") if route_prefix.strip("/") else ""
        handler = type("_Handler", (_Handler,), {"listener": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-listener", daemon=True
        )
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._server.shutdown()
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._server.server_close()

    def busy(self) -> bool:
        with self._lock:
            return self._in_flight > 0

    def find(
        self, method: str, path: str
    ) -> tuple[HttpFunction, dict[str, str]] | None:
        """The function and route parameters for a request path, if any."""
        path = unquote(path)
        if self._prefix:
            if path.lower() != self._prefix.lower() and not path.lower().startswith(
                self._prefix.lower() + "/"
            ):
                return None
            path = path[len(self._prefix) :]
        for function in self._functions:
            params = function.match(method, path)
            if params is not None:
                return function, params
        return None

    def invoke(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Run the matching function; the status, headers and body to send back."""
        parts = urlsplit(url)
        found = self.find(method, parts.path)
        if found is None:
            return 404, {"Content-Type": "text/plain"}, b"Not Found"
        function, route_params = found

        request = func.HttpRequest(
            method=method,
            url=url,
            headers=headers,
            params=dict(parse_qsl(parts.query)),
            route_params=route_params,
            body=body,
        )
        with self._lock:
            self._in_flight += 1
        started = time.monotonic()
        self._recorder.started()
        try:
            result = function.call(**{function.param: request})
            status, response_headers, response_body = _to_http(result)
        except Exception as exc:
            _log.exception("HTTP function %s failed", function.name)
            self._recorder.record(
                Invocation(
                    function.name,
                    "failed",
                    time.monotonic() - started,
                    parts.path,
                    error=type(exc).__name__,
                )
            )
            body_500 = json.dumps({"error": "internal server error"}).encode()
            return 500, {"Content-Type": "application/json"}, body_500
        finally:
            with self._lock:
                self._in_flight -= 1
        self._recorder.record(
            Invocation(
                function.name, "succeeded", time.monotonic() - started, parts.path
            )
        )
        return status, response_headers, response_body


class _Handler(BaseHTTPRequestHandler):
    listener: HttpListener
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = self.headers.get("Host") or "127.0.0.1"
        url = f"http://{host}{self.path}"
        status, headers, payload = self.listener.invoke(
            self.command, url, dict(self.headers.items()), body
        )
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        # Invocations are logged by the recorder; paths may carry identifiers.
        pass


def _to_http(result: Any) -> tuple[int, dict[str, str], bytes]:
    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers.items())
        if "content-type" not in {name.lower() for name in headers}:
            content_type = result.mimetype or "text/plain"
            if result.charset and not content_type.startswith("application/octet"):
                content_type += f"; charset={result.charset}"
            headers["Content-Type"] = content_type
        return result.status_code, headers, result.get_body() or b""
    if result is None:
        return 204, {}, b""
    if isinstance(result, bytes):
        return 200, {"Content-Type": "application/octet-stream"}, result
    if isinstance(result, str):
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, result.encode()
    return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()
