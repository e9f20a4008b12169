"""Config: recipes, dotted overrides, errors that name the key, cross-field validation."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from r1kit.config import Config, ConfigError
from r1kit.recipe import load_recipe, save_config

RECIPES = sorted(p for p in Path(__file__).parent.parent.joinpath("recipes").rglob("*.yaml") if p.parent.name != "accelerate")
ACCELERATE_CONFIGS = sorted(Path(__file__).parent.parent.joinpath("recipes", "accelerate").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_tiny_world():
    cfg = load_recipe()
    assert cfg.model.name_or_path == "builtin:tiny-sft" and cfg.data.source == "tiny_arith"
    assert cfg.prompts_per_step * cfg.rollout.num_generations == cfg.train.batch_size


def test_recipe_and_overrides(tmp_path):
    path = write(tmp_path, "rollout: {num_generations: 8}\ntrain: {batch_size: 64, learning_rate: 1e-4}\n")
    cfg = load_recipe(path, ["train.learning_rate=3e-5", "algo.beta=0.04", "name=x", "model.lora.enabled=true"])
    assert cfg.rollout.num_generations == 8 and cfg.train.batch_size == 64
    assert cfg.train.learning_rate == 3e-5 and cfg.algo.beta == 0.04 and cfg.name == "x"
    assert cfg.model.lora.enabled is True
    assert cfg.rollout.temperature == 1.0  # untouched defaults survive a partial recipe


def test_rewards_entries_keep_extra_keys_as_params(tmp_path):
    path = write(tmp_path, "rewards:\n  - {name: accuracy}\n  - {name: format, weight: 0.2, mode: strict}\n")
    cfg = load_recipe(path)
    assert [(r.name, r.weight, r.params) for r in cfg.rewards] == [
        ("accuracy", 1.0, {}), ("format", 0.2, {"mode": "strict"})]


@pytest.mark.parametrize("text, overrides, message", [
    ("trian: {max_steps: 3}\n", [], "unknown key 'trian'"),
    ("train: {max_stpes: 3}\n", [], "unknown key 'train.max_stpes'"),
    ("", ["rollout.temperature=hot"], "rollout.temperature: expected float"),
    ("", ["train.max_steps=1.5"], "train.max_steps: expected int"),
    ("", ["algo.scale_rewards=batchy"], "algo.scale_rewards: expected one of"),
    ("", ["train.batch_size=130"], "train.batch_size (130) must be divisible by rollout.num_generations (16)"),
    ("", ["train.micro_batch_size=48"], "divisible by train.micro_batch_size (48)"),
    ("", ["rollout.num_generations=1", "train.batch_size=8", "train.micro_batch_size=8"], "num_generations must be >= 2"),
    ("", ["algo.beta=-1"], "algo.beta must be >= 0"),
    ("", ["nope"], "must look like key.sub=value"),
    ("", ["train.max_steps.x=1"], "'train.max_steps' is not a section"),
    ("rewards: [{weight: 1.0}]\n", [], "needs a 'name'"),
    ("- a\n- b\n", [], "must be a mapping"),
    ("", ["rollout.num_generations=0"], "num_generations must be >= 2"),  # was a ZeroDivisionError
    ("", ["rollout.top_k=-1"], "rollout.top_k must be >= 0"),
    ("", ["train.save_every=-1"], "train.save_every must be >= 0"),
    ("", ["data.eval_split=train"], "data.eval_split ('train') must differ from data.split"),
    ("train: {learning_rate: 5e-5x}\n", [], "train.learning_rate: expected float, got '5e-5x'"),
])
def test_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(write(tmp_path, text), overrides)
    assert message in str(err.value)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("no/such/recipe.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_recipe(None, ["train.learning_rate=2e-5", "rewards=[{name: accuracy, weight: 2}]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_recipe(tmp_path / "config.yaml")
    # the file records the preset resolved, so it describes the same run
    assert again.algo == cfg.algo.resolved() and again.algo.resolved() == cfg.algo.resolved()
    assert dataclasses.replace(again, algo=cfg.algo) == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["learning_rate"] == 2e-5


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_validates(recipe):
    assert isinstance(load_recipe(recipe), Config)


def test_there_are_recipes():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load_with_accelerates_own_reader(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    expected = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero2-offload": "DEEPSPEED", "zero3": "DEEPSPEED",
                "fsdp2": "FSDP"}[path.stem]
    assert config.distributed_type.value == expected
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[4])
    assert len(ACCELERATE_CONFIGS) == 5


def test_yaml_float_text_is_a_float_everywhere(tmp_path):
    """PyYAML (YAML 1.1) reads 5e-5 as a string: a recipe's float fields and float reward parameters take it."""
    text = ("train: {learning_rate: 5e-5, weight_decay: 1e-2}\nalgo: {epsilon_high: 2.8e-1}\n"
            "rewards: [{name: length, weight: 5e-1, max_value_wrong: -5e-1}]\n")
    cfg = load_recipe(write(tmp_path, text))
    assert cfg.train.learning_rate == 5e-5 and cfg.train.weight_decay == 0.01 and cfg.algo.epsilon_high == 0.28
    assert cfg.rewards[0].weight == 0.5
    from r1kit.rewards import build_rewards

    (_, fn, _), = build_rewards([{"name": "length", **cfg.rewards[0].params}])
    assert fn.keywords == {"max_value_wrong": -0.5}


def test_data_source_gsm8k_works_with_defaults():
    """data.source=gsm8k alone: training reads train, evaluation the held-out test split."""
    from r1kit.data.sources import load_data

    cfg = load_recipe(None, ["data.source=gsm8k"])
    assert cfg.data.eval_split == "auto"
    _, report = load_data(cfg.data, cfg.data.eval_split, size=3)
    assert report.origin.startswith("gsm8k[test]")
    _, report = load_data(cfg.data, cfg.data.split, size=3)
    assert report.origin.startswith("gsm8k[train]")
