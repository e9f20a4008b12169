"""Every numeric knob has a range, and a value just outside it is refused at load with the key's name."""

import dataclasses
import math
import types
import typing

import pytest

from r1kit.config import Config, ConfigError, RewardCfg
from r1kit.recipe import load_recipe
from r1kit.config_ranges import RANGES, Range, range_problem


def numeric_fields(cls=Config, prefix=""):
    """(dotted key, int or float) of every number in the config tree; list items (rewards) by their section."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            options = [o for o in typing.get_args(tp) if o is not type(None)]
            tp = options[0] if len(options) == 1 else tp
        if typing.get_origin(tp) is list and typing.get_args(tp)[0] is RewardCfg:
            yield from numeric_fields(RewardCfg, f"{key}.")
        elif dataclasses.is_dataclass(tp):
            yield from numeric_fields(tp, f"{key}.")
        elif tp in (int, float):
            yield key, tp


NUMERIC = dict(numeric_fields())


def test_every_numeric_field_has_a_rule_and_every_rule_a_field():
    assert len(NUMERIC) > 60
    assert sorted(set(NUMERIC) - set(RANGES)) == []  # a new knob needs its range in r1kit.config_ranges
    assert sorted(set(RANGES) - set(NUMERIC)) == []


def outside(rule: Range, tp) -> list:
    """Values just past each bound of `rule` (the bound itself when it is excluded)."""
    values = []
    if rule.low is not None:
        values.append(rule.low if rule.low_open else (rule.low - 1 if tp is int else math.nextafter(rule.low, -math.inf)))
    if rule.high is not None:
        values.append(rule.high if rule.high_open else (rule.high + 1 if tp is int else math.nextafter(rule.high, math.inf)))
    if tp is float:
        values += [math.nan, math.inf]
    return values


CASES = [(key, value) for key, tp in NUMERIC.items() if key in RANGES for value in outside(RANGES[key], tp)]


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_value_outside_the_range_is_refused_naming_the_key(key, value):
    override = key.replace("rewards.", "rewards.0.") + "=" + (repr(value) if math.isfinite(value) else str(value))
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    shown = key.replace("rewards.", "rewards[0].")
    assert str(err.value).startswith(f"{shown} must be ") and "\n" not in str(err.value)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_the_bounds_that_are_allowed_pass(key):
    rule = RANGES[key]
    for bound, excluded in ((rule.low, rule.low_open), (rule.high, rule.high_open)):
        if bound is not None and not excluded:
            assert range_problem(key, bound) is None


@pytest.mark.parametrize("override, message", [
    ("train.max_grad_norm=-1", "train.max_grad_norm must be >= 0, got -1.0"),  # would reverse the update
    ("train.learning_rate=10", "train.learning_rate must be in (0, 1], got 10.0"),
    ("train.learning_rate=0", "train.learning_rate must be in (0, 1], got 0.0"),
    ("sft.learning_rate=2", "sft.learning_rate must be in (0, 1], got 2.0"),
    ("rollout.top_p=1.5", "rollout.top_p must be in (0, 1], got 1.5"),
    ("rollout.temperature=1e-300", "rollout.temperature must be >= 0.01, got 1e-300"),
    ("train.adam_beta2=1", "train.adam_beta2 must be in [0, 1), got 1.0"),
    ("model.lora.dropout=1", "model.lora.dropout must be in [0, 1), got 1.0"),
    ("seed=-1", "seed must be in [0, 4294967295], got -1"),
    ("algo.epsilon=1.5", "algo.epsilon must be in (0, 1] or null, got 1.5"),  # null: the loss_type preset's
    ("train.collapse_steps=-1", "train.collapse_steps must be >= 0, got -1"),
])
def test_the_knobs_that_wreck_training_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert str(err.value) == message


def test_every_problem_is_named_on_one_line():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["train.max_grad_norm=-1", "eval.top_p=2"])
    assert str(err.value) == ("train.max_grad_norm must be >= 0, got -1.0 (and 1 more: eval.top_p must be in (0, 1], "
                              "got 2.0)")  # in the table's order


def test_range_problem_is_what_other_commands_check_their_flags_with():
    assert range_problem("generate.top_p", 0.9) is None
    assert range_problem("generate.temperature", -1.0) == "generate.temperature must be >= 0.01, got -1.0"
    assert range_problem("generate.limit", None) is None  # nullable knobs: their type says so
    assert range_problem("generate.n", True) == "generate.n must be a number >= 1, got True"
