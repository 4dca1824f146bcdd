"""The generated Table E.1-1 module: complete, with its edition, regenerable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from shared_code.domain.deid import ps315_table

ROOT = Path(__file__).resolve().parents[4]
TABLE_JSON = (
    ROOT.parent / "shared" / "reference" / "ps3.15-table-e1-1.innolitics-2024b.json"
)


def test_every_row_of_the_table_is_kept() -> None:
    rows = (
        len(ps315_table.BASIC_PROFILE) + len(ps315_table.WILDCARD_RULES) + 1
    )  # + the private attributes row
    assert ps315_table.EDITION == "2024b"
    assert rows == ps315_table.ROWS == 621
    # The JSON's 602 K or C cells of the 10 option columns, less the private row's.
    option_cells = sum(len(tags) for tags in ps315_table.OPTIONS.values())
    assert option_cells == 601
    assert ps315_table.PRIVATE_OPTIONS == {"113111": "C"}
    assert len(ps315_table.OPTIONS) == 10


def test_generator_reproduces_the_module() -> None:
    if not TABLE_JSON.exists():  # the reference lives beside the repository
        return
    spec = importlib.util.spec_from_file_location(
        "gen", ROOT / "scripts" / "gen_ps315_table.py"
    )
    assert spec and spec.loader
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)

    text = generator.render(json.loads(TABLE_JSON.read_text()), "2024b")

    assert text == Path(ps315_table.__file__).read_text()
