"""The Bicep in infra/, parsed with pycep-parser into plain JSON, and queries on it."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycep import BicepParser

from tests.conftest import ROOT

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    """The pycep JSON of one file: globals, parameters, variables, resources, ..."""
    result: Any = BicepParser().parse(file_path=path)
    return dict(result)


@dataclass(frozen=True)
class Resource:
    file: Path
    symbol: str
    type: str
    config: dict[str, Any]

    @property
    def properties(self) -> dict[str, Any]:
        props = self.config.get("properties") or {}
        return props if isinstance(props, dict) else {}


def resources(type_: str | None = None) -> Iterator[Resource]:
    """Every declared (not ``existing``) resource, loops and conditions unwrapped."""
    for path in bicep_files():
        for symbol, declared in (parse(path).get("resources") or {}).items():
            if declared.get("existing") or (type_ and declared["type"] != type_):
                continue
            yield Resource(path, symbol, declared["type"], _unwrap(declared["config"]))


def the_resource(type_: str) -> Resource:
    found = list(resources(type_))
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]


def variable(path: Path, name: str) -> Any:
    return _unwrap(parse(path)["variables"][name]["value"])


def app_settings() -> dict[str, Any]:
    """The Function App's settings, name → value expression (names may interpolate)."""
    site = the_resource("Microsoft.Web/sites")
    expression = site.properties["siteConfig"]["appSettings"]
    settings: dict[str, Any] = {}
    for item in _expand(site.file, expression):
        assert isinstance(item, dict) and set(item) == {"name", "value"}, item
        settings[item["name"]] = item["value"]
    return settings


def role_definition_guid(resource: Resource) -> str:
    """The role GUID of a roleAssignments resource (a literal or a variable)."""
    role = resource.properties["roleDefinitionId"]
    if isinstance(role, dict) and "function" in role:
        role = role["function"]["parameters"]["resource_name_1"]
    if isinstance(role, str) and role in (parse(resource.file).get("variables") or {}):
        role = variable(resource.file, role)
    assert isinstance(role, str), role
    return role


def module_params(module: str) -> dict[str, Any]:
    """The params main.bicep passes to the module whose path ends in ``module``."""
    for declared in parse(MAIN)["modules"].values():
        config = _unwrap(declared["config"])
        if declared["detail"]["path"].endswith(module):
            params: dict[str, Any] = config["params"]
            return params
    raise AssertionError(f"main.bicep does not use {module}")


def _expand(path: Path, expression: Any) -> list[Any]:
    """Resolve concat(), variable names and for-expressions into a flat list."""
    if isinstance(expression, list):
        return [item for entry in expression for item in _expand_item(path, entry)]
    if isinstance(expression, str):
        return _expand(path, parse(path)["variables"][expression]["value"])
    if isinstance(expression, dict) and "function" in expression:
        function = expression["function"]
        assert function["type"] == "concat", function
        return [
            item
            for arg in function["parameters"].values()
            for item in _expand(path, arg)
        ]
    if isinstance(expression, dict) and "loop_type" in expression:
        return [expression["config"]]
    raise AssertionError(f"cannot read {expression!r}")


def _expand_item(path: Path, entry: Any) -> list[Any]:
    return (
        [entry] if isinstance(entry, dict) and "name" in entry else _expand(path, entry)
    )


def _unwrap(config: Any) -> Any:
    """A resource's body under a for-loop or an if-condition."""
    while isinstance(config, dict):
        looped = "loop_type" in config
        conditional = "condition" in config and len(config) == 2
        if "config" not in config or not (looped or conditional):
            break
        config = config["config"]
    return config
