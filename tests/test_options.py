"""Typed method options: one parser, one-line errors for unknown keys and bad values."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from specbench_cli.drafters.pld import PldOptions
from specbench_cli.options import describe_options, option, parse_options, split_nested
from specbench_cli.types import SpecbenchError


@dataclass
class ToyOptions:
    k: int = option(5, "chain length", "toy paper", minimum=1)
    rate: float = option(0.5, "a rate")
    on: bool = option(True, "a switch")
    fallback: str | None = option(None, "another method", choices=(None, "pld", "none"))


def test_strings_are_parsed_to_the_declared_types():
    opts = parse_options(ToyOptions, {"k": "8", "rate": "0.25", "on": "off", "fallback": "pld"}, owner="toy")
    assert opts == ToyOptions(k=8, rate=0.25, on=False, fallback="pld")
    assert parse_options(ToyOptions, {}, owner="toy") == ToyOptions()


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"kk": 3}, ["unknown toy option", "kk", "choose from: k, rate, on, fallback"]),
        ({"k": "abc"}, ["k='abc'", "not an integer"]),
        ({"k": "0"}, ["k='0'", "at least 1"]),
        ({"rate": "nan"}, ["rate='nan'", "finite"]),
        ({"on": "maybe"}, ["on='maybe'", "boolean"]),
        ({"fallback": "sps"}, ["fallback='sps'", "not one of"]),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(raw, words):
    with pytest.raises(SpecbenchError) as err:
        parse_options(ToyOptions, raw, owner="toy")
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_nested_keys_are_split_for_routing():
    assert split_nested({"k": 1, "fallback.k": 3, "fallback.x": 2}) == (
        {"k": 1},
        {"fallback": {"k": 3, "x": 2}},
    )


def test_pld_rejects_a_misspelt_option_and_describes_its_own():
    with pytest.raises(SpecbenchError, match="num_preds"):
        parse_options(PldOptions, {"num_preds": 4}, owner="pld")
    rows = {row["name"]: row for row in describe_options(PldOptions)}
    assert (
        rows["num_pred"]["default"] == 10 and rows["num_pred"]["type"] == "int" and rows["num_pred"]["source"]
    )
