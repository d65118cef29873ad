"""contrib/scattergate.toml against the config dataclasses: it cannot drift from config.py.

Every key of every table is in the file, as its default commented out ("#key = value"), with an
explanation; uncommented, the whole file loads and gives exactly the defaults; as shipped, it loads."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from scattergate.config import Config, from_dict, load
from scattergate.config_check import validate

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib/scattergate.toml"
KEY_LINE = re.compile(r"^#(\w+) = ")


def dataclass_keys(obj: Any, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            keys |= dataclass_keys(value, f"{prefix}{field.name}.")
        else:
            keys.add(prefix + field.name)
    return keys


def toml_keys(table: dict[str, Any], prefix: str = "", nested: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    keys = set()
    for name, value in table.items():
        if isinstance(value, dict) and f"{prefix}{name}" in nested:
            keys |= toml_keys(value, f"{prefix}{name}.", nested)
        else:
            keys.add(prefix + name)
    return keys


def uncommented() -> dict[str, Any]:
    text = "\n".join(line[1:] if KEY_LINE.match(line) else line for line in EXAMPLE.read_text().splitlines())
    return tomllib.loads(text)


def tables(obj: Any, prefix: str = "") -> set[str]:
    names = set()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            names |= {prefix + field.name} | tables(value, f"{prefix}{field.name}.")
    return names


def test_every_key_of_the_configuration_is_in_the_example() -> None:
    present = toml_keys(uncommented(), nested=tables(Config()))
    expected = dataclass_keys(Config())
    assert expected - present == set(), "keys missing from contrib/scattergate.toml"
    assert present - expected == set(), "keys in contrib/scattergate.toml that config.py does not have"


def test_the_example_shows_the_defaults_of_config_py() -> None:
    assert from_dict(uncommented()) == Config()


def test_every_key_has_an_explanation_above_it() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if KEY_LINE.match(line):
            above = lines[number - 1]
            assert above.startswith("# ") and len(above) > 4, f"line {number + 1}: {line} has no explanation"


def test_the_example_as_shipped_loads_and_validates() -> None:
    config = load(EXAMPLE)
    validate(config)
    assert config == Config()  # everything commented out: it changes nothing until edited
