"""sabr.fields: one type per settings field, read the same from a YAML file and from a flag."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from sabr import ConfigError, cli
from sabr.app_config import ElevatorSettings, RecognizeSettings
from sabr.config import RunConfig
from sabr.fields import FieldType, _f, check_fields, field_types, resolve


@dataclass
class Every:
    """A field of each supported type."""

    count: int = _f(1, "an int", min=0)
    rate: float = _f(0.5, "a float")
    name: str = _f("a", "a str")
    flag: bool = _f(False, "a bool")
    folder: Path | None = _f(None, "a Path")
    mode: Literal["fast", "slow"] = _f("fast", "a Literal")
    sizes: tuple[int, ...] = _f((1,), "a tuple of any length")
    pair: tuple[int, int] | None = _f(None, "a tuple of two")
    factors: list[float] = _f([0.1], "a list")
    either: float | str = _f("auto", "a number or a keyword, passed through")

    def __post_init__(self) -> None:
        check_fields(self)


EXPECTED = dict(count=3, rate=0.25, name="12", flag=True, folder=Path("data/x"), mode="slow", sizes=(2, 3),
                pair=(4, 5), factors=[0.5], either="0.5")


def test_each_type_reads_the_same_from_yaml_and_from_flags():
    text = ("count: '3'\nrate: 2.5e-1\nname: 12\nflag: yes\nfolder: data/x\nmode: slow\nsizes: [2, 3.0]\n"
            "pair: [4, 5]\nfactors: 0.5\neither: '0.5'\n")
    from_yaml = Every(**yaml.safe_load(text))
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser, Every)
    args = parser.parse_args(["--count", "3", "--rate", "2.5e-1", "--name", "12", "--flag", "--folder", "data/x",
                              "--mode", "slow", "--sizes", "2", "3", "--pair", "4", "5", "--factors", "0.5",
                              "--either", "0.5"])
    from_flags = Every(**cli._given(args, Every))
    assert from_yaml == from_flags == Every(**EXPECTED)
    assert isinstance(from_flags.folder, Path) and isinstance(from_yaml.sizes, tuple)


@pytest.mark.parametrize("values, message", [
    (dict(mode="medium"), "mode must be one of fast, slow"),
    (dict(pair=[1, 2, 3]), "pair needs 2 values, got 3"),
    (dict(sizes=[1, 2.5]), "sizes must be a whole number"),
    (dict(folder=True), "folder is text"),
    (dict(count=-1), "count must be >= 0"),
    (dict(mode=None), "mode needs a value"),
])
def test_each_type_refuses_what_it_cannot_hold(values, message):
    with pytest.raises(ConfigError, match=message):
        Every(**values)


def test_a_literal_flag_offers_its_values_as_choices(capsys):
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser, Every)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])
    assert "invalid choice: 'medium'" in capsys.readouterr().err


def test_the_shipped_settings_resolve_to_what_they_were():
    run = field_types(RunConfig)
    assert run["epochs_base"] == FieldType(int)
    assert run["image_size"] == FieldType(int, optional=True)
    assert run["sweep"] == FieldType(float, many=list)
    assert run["augment"] == FieldType(str, optional=True, many=list)
    assert run["accuracy_threshold"] == FieldType(None)  # "auto" or a number: RunConfig reads it
    assert run["bn_recalibrate"] == FieldType(bool, optional=True)
    assert field_types(RecognizeSettings)["headless"] == FieldType(bool)
    assert field_types(ElevatorSettings)["fps"] == FieldType(float, optional=True)


def test_an_unsupported_type_is_a_programming_error_not_a_string_flag():
    with pytest.raises(TypeError, match="unsupported field type"):
        resolve(dict[str, int])
    with pytest.raises(TypeError, match="Literal"):
        resolve(Literal["a", 1])
