"""What the code needs from its environment, read from the source itself (AST).

Nothing here is a hand-kept list: when config.py reads a new setting, a trigger names
a new queue or a service writes to a new state container, these answers change and
the infrastructure tests hold the Bicep to them.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

from tests.conftest import ROOT

CONFIG = ROOT / "shared_code" / "config.py"
_ENV_NAMES = {"env", "environ", "os.environ"}
_STATE_METHODS = {"get", "create", "upsert", "query", "delete"}


@dataclass(frozen=True)
class SettingsRead:
    """Setting names a module reads: exact names and per-tenant prefixes."""

    names: frozenset[str]
    prefixes: frozenset[str]


def settings_read(source: str) -> SettingsRead:
    """Names passed to ``env.get``/``env[...]`` (or to a helper given ``env``).

    An f-string name such as ``f"EXCHANGE_PSEUDONYM_KEY_{suffix}"`` counts as the
    prefix before its first placeholder.
    """
    names: set[str] = set()
    prefixes: set[str] = set()

    def take(node: ast.expr) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                prefixes.add(head.value)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and _is_env(node.value):
            take(node.slice)
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if node.args and (
                func == "os.getenv"
                or (func.endswith(".get") and func[: -len(".get")] in _ENV_NAMES)
            ):
                take(node.args[0])
            elif any(_is_env(arg) for arg in node.args):
                # A helper such as _choice(env, "EXCHANGE_BUS_KIND", ...): the name is
                # the first string after the environment.
                after = node.args[[_is_env(a) for a in node.args].index(True) + 1 :]
                if after:
                    take(after[0])
    return SettingsRead(frozenset(names), frozenset(prefixes))


def config_settings() -> SettingsRead:
    return settings_read(CONFIG.read_text())


def settings_defaults(suffix: str) -> set[str]:
    """String defaults of the ``Settings`` fields whose names end in ``suffix``."""
    tree = ast.parse(CONFIG.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and item.target.id.endswith(suffix)
                    and isinstance(item.value, ast.Constant)
                ):
                    found.add(str(item.value.value))
    return found


@dataclass(frozen=True)
class Trigger:
    function: str
    kind: str
    keywords: dict[str, str]


def triggers() -> list[Trigger]:
    """The trigger decorators of functions/*.py with their string keyword arguments."""
    found = []
    for path in sorted((ROOT / "functions").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if not (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Attribute)
                ):
                    continue
                keywords = {
                    kw.arg: kw.value.value
                    for kw in decorator.keywords
                    if kw.arg
                    and isinstance(kw.value, ast.Constant)
                    and isinstance(kw.value.value, str)
                }
                found.append(Trigger(node.name, decorator.func.attr, keywords))
    return found


def state_containers() -> set[str]:
    """Containers named as the first argument of ``state.get/create/upsert/...``."""
    found: set[str] = set()
    for path in [*ROOT.glob("shared_code/**/*.py"), *ROOT.glob("functions/*.py")]:
        tree = ast.parse(path.read_text())
        constants = _module_strings(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _STATE_METHODS
                and ast.unparse(node.func.value).split(".")[-1] == "state"
                and node.args
            ):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
            elif isinstance(first, ast.Name) and first.id in constants:
                found.add(constants[first.id])
    return found


def _module_strings(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _is_env(node: ast.expr) -> bool:
    return ast.unparse(node) in _ENV_NAMES


def sample_settings() -> set[str]:
    """The setting names of local.settings.sample.json."""
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())
    return set(sample["Values"])
