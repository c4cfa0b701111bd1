"""distrain/config/coerce.py: a config value checked against its annotation and converted (YAML's ints to
floats, lists to tuples, `32` to "32"), or a ConfigError naming the dotted key."""

# typing's Optional and Union are tested beside `X | Y`: they are other objects (typing.Union, not
# types.UnionType), which configs' and components' annotations still use.
# ruff: noqa: UP007, UP045

from typing import Any, Callable, Literal, Optional, Union

import pytest

from distrain.config.coerce import build, can_coerce, coerce
from distrain.config.schema import OptimConfig
from distrain.errors import ConfigError

KEY = "section.key"


def refused(value, tp, key=KEY):
    with pytest.raises(ConfigError) as info:
        coerce(value, tp, key)
    return info.value


@pytest.mark.parametrize(
    "value,tp,expected",
    [
        (32, Literal["32", "bf16", "fp16"], "32"),  # YAML reads `precision: 32` as an int
        ("bf16", Literal["32", "bf16", "fp16"], "bf16"),
        (1, float, 1.0),
        (0.5, float, 0.5),
        ("1e-3", float, 0.001),
        ("2", float, 2.0),
        (3, int, 3),
        (True, bool, True),
        (False, bool, False),
        ("x", str, "x"),
        (None, type(None), None),
        ([1, 2], list[int], [1, 2]),
        ([1, 2.5], list[float], [1.0, 2.5]),
        ([1, 2, 3], tuple[int, ...], (1, 2, 3)),
        ((1, 2), tuple[int, ...], (1, 2)),
        ([1, 2], tuple[int, float], (1, 2.0)),
        (None, Optional[int], None),
        (4, Optional[int], 4),
        (None, int | None, None),
        (2, float | None, 2.0),
        ("x", Union[int, str], "x"),
        (3, Union[int, str], 3),
        ([8, 8], int | list[int], [8, 8]),
        ({"a": 1, "b": 2}, dict[str, float], {"a": 1.0, "b": 2.0}),
        ({1: "x"}, dict[str, str], {"1": "x"}),
        (object, Any, object),
    ],
)
def test_a_value_that_fits_is_converted(value, tp, expected):
    got = coerce(value, tp, KEY)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    "value,tp,words",
    [
        ("bf17", Literal["32", "bf16", "fp16"], "must be one of 32, bf16, fp16; got 'bf17'"),
        (True, Literal["1", "true"], "must be one of"),  # a bool is not read as its string
        ("abc", float, "expected a number, got 'abc'"),
        (True, float, "expected a number"),
        (3.0, int, "expected an integer, got 3.0"),
        (True, int, "expected an integer"),
        ("3", int, "expected an integer"),
        ("true", bool, "expected true or false"),
        (1, bool, "expected true or false"),
        (3, str, "expected a string"),
        (0, type(None), "expected null"),
        ("x", list[int], "expected a list"),
        ((1, 2), list[int], "expected a list"),
        ("x", tuple[int, ...], "expected a list"),
        ([1, 2, 3], tuple[int, float], "expected a list of 2 values"),
        ("x", Optional[int], "expected an integer"),
        (1.5, Union[int, str], "expected int or str, got 1.5"),
        ([1], dict[str, int], "must be a mapping of keys"),
    ],
)
def test_a_value_that_does_not_fit_names_the_key(value, tp, words):
    error = refused(value, tp)
    assert error.key == KEY and words in str(error), str(error)


def test_a_literal_typo_suggests_the_nearest_choice():
    assert refused("bfloat", Literal["float32", "bfloat16"]).hint == "did you mean 'bfloat16'?"
    assert refused("zzz", Literal["float32", "bfloat16"]).hint is None


@pytest.mark.parametrize(
    "value,tp,key",
    [
        ([1, "x", 3], list[int], KEY + "[1]"),
        ([1, "x"], tuple[int, ...], KEY + "[1]"),
        ([1, "x"], tuple[int, int], KEY + "[1]"),
        ({"a": 1, "b": "x"}, dict[str, int], KEY + ".b"),
        ({"a": [1, "x"]}, dict[str, list[int]], KEY + ".a[1]"),
    ],
)
def test_an_element_is_named_by_its_place(value, tp, key):
    assert refused(value, tp).key == key


def test_a_section_is_built_with_its_dotted_keys():
    optim = coerce({"lr": 1, "name": "adam", "args": {"betas": [0.9, 0.99]}}, OptimConfig, "optim")
    assert optim == OptimConfig(lr=1.0, name="adam", args={"betas": [0.9, 0.99]}) and isinstance(optim.lr, float)
    assert refused({"lrr": 0.1}, OptimConfig, "optim").key == "optim.lrr"
    assert refused({"lr": "fast"}, OptimConfig, "optim").key == "optim.lr"
    assert OptimConfig(name="sgd").lr is None  # required only when no optimizer is given (loop/optim.py)
    assert refused({"lr": -1}, OptimConfig, "optim").key == "optim.lr"  # the section's own check
    assert refused(0.1, OptimConfig, "optim").key == "optim"
    assert build(OptimConfig, {"lr": 0.1}, "optim") == OptimConfig(lr=0.1)


def test_can_coerce_says_which_annotations_are_checked():
    for tp in (
        int,
        float,
        bool,
        str,
        Any,
        type(None),
        list[int],
        dict[str, float],
        tuple[int, ...],
        Optional[int],
        int | str,
        Literal["a"],
        OptimConfig,
    ):
        assert can_coerce(tp), tp
    for tp in (Callable, list[Callable], object, bytes):
        assert not can_coerce(tp), tp


def test_an_annotation_it_does_not_know_is_a_bug_not_a_config_error():
    with pytest.raises(TypeError, match="distrain bug: no coercion"):
        coerce(b"x", bytes, KEY)
