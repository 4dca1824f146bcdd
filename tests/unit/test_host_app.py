"""The local host's reading of a function app: triggers, routes, patterns, schedules."""

from __future__ import annotations

from datetime import UTC, datetime

import azure.functions as func
import pytest

from localdev.host_app import (
    BlobFunction,
    HostError,
    HttpFunction,
    QueueFunction,
    TimerFunction,
    describe_function,
    load_app,
    resolve_setting,
    route_regex,
)
from localdev.host_timer import next_occurrence

APP = "tests.fixtures.hostapp.function_app"


def test_the_fixture_app_is_read_once_and_described() -> None:
    environ = {"HOSTAPP_QUEUE": "hostapp-work"}

    first = load_app(APP, environ)
    again = load_app(APP, environ)  # the SDK would refuse a second get_functions()

    assert [f.name for f in first.functions] == [f.name for f in again.functions]
    assert first.route_prefix == "hostapi"
    [blob] = first.of_kind(BlobFunction)
    assert (blob.container, blob.pattern, blob.prefix) == (
        "hostapp-in",
        "{tenant}/{name}",
        "",
    )
    [queue] = first.of_kind(QueueFunction)
    assert queue.queue_name == "hostapp-work"
    assert {f.route for f in first.of_kind(HttpFunction)} == {
        "items/{item_id:int}",
        "echo",
        "boom",
    }
    [timer] = first.of_kind(TimerFunction)
    assert timer.schedule == "*/1 * * * * *"


def test_an_unsupported_trigger_is_named() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")
    def storage_queue(msg: func.QueueMessage) -> None:
        pass

    [function] = app.get_functions()
    with pytest.raises(HostError, match="queueTrigger"):
        describe_function(function, {})


def test_an_unsupported_binding_is_named() -> None:
    app = func.FunctionApp()

    @app.route(route="r")
    @app.blob_input(arg_name="doc", path="c/b", connection="AzureWebJobsStorage")
    def with_input(req: func.HttpRequest, doc: func.InputStream) -> str:
        return ""

    [function] = app.get_functions()
    with pytest.raises(HostError, match="'blob'"):
        describe_function(function, {})


def test_blob_patterns_bind_the_last_parameter_across_folders() -> None:
    blob = BlobFunction("f", "b", "uploads", "{tenant}/{name}", "c", print)

    assert blob.match("trust-a/scan.dcm") == {"tenant": "trust-a", "name": "scan.dcm"}
    assert blob.match("trust-a/batch/1.dcm") == {
        "tenant": "trust-a",
        "name": "batch/1.dcm",
    }
    assert blob.match("scan.dcm") is None


def test_blob_patterns_with_a_literal_prefix() -> None:
    blob = BlobFunction("f", "b", "uploads", "in/{name}.zip", "c", print)

    assert blob.prefix == "in/"
    assert blob.match("in/a.zip") == {"name": "a"}
    assert blob.match("in/a.dcm") is None


@pytest.mark.parametrize(
    ("route", "path", "expected"),
    [
        ("shares/{share_id}", "shares/abc", {"share_id": "abc"}),
        ("shares/{share_id}", "SHARES/abc", {"share_id": "abc"}),
        ("shares/{share_id}", "shares/abc/more", None),
        ("items/{n:int}", "items/12", {"n": "12"}),
        ("items/{n:int}", "items/x", None),
        ("items/{n:int?}", "items", {}),
        ("files/{*rest}", "files/a/b/c", {"rest": "a/b/c"}),
        (
            "shares/{id:guid}",
            "shares/6f1c1d0e-8f4f-4a57-9a55-0c3f0a6b9d21",
            {"id": "6f1c1d0e-8f4f-4a57-9a55-0c3f0a6b9d21"},
        ),
        ("shares/{id:guid}", "shares/nope", None),
    ],
)
def test_route_templates(
    route: str, path: str, expected: dict[str, str] | None
) -> None:
    found = route_regex(route).fullmatch(path)
    params = (
        {k: v for k, v in found.groupdict().items() if v is not None} if found else None
    )
    assert params == expected


def test_setting_references_resolve_from_the_app_environment() -> None:
    assert resolve_setting("%QUEUE%-x", {"QUEUE": "instances"}) == "instances-x"
    with pytest.raises(HostError, match="MISSING"):
        resolve_setting("%MISSING%", {})


def test_ncrontab_has_seconds_first() -> None:
    after = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)

    assert next_occurrence("0 */5 * * * *", after) == datetime(
        2024, 1, 1, 0, 5, tzinfo=UTC
    )
    assert next_occurrence("*/10 * * * * *", after) == datetime(
        2024, 1, 1, 0, 0, 10, tzinfo=UTC
    )
    assert next_occurrence("00:00:30", after) == datetime(
        2024, 1, 1, 0, 0, 31, tzinfo=UTC
    )
    with pytest.raises(HostError, match="6 fields"):
        next_occurrence("*/5 * * * *", after)
