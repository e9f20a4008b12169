"""Recipes: YAML files and ``a.b=c`` overrides turned into a checked Config (r1kit.config's dataclasses).

Defaults <- recipe YAML <- overrides, then r1kit.config_checks.validate(). Unknown keys and wrong types fail
with the key's dotted name; a key given twice in one mapping is an error (PyYAML would keep the last); TRL's
GRPOConfig names for the off-policy correction are accepted for r1kit's. Values are parsed as YAML
(``1e-4``, ``true``, ``[a]``), with YAML 1.1's exponent-without-dot floats read as numbers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from r1kit.config import FLOAT_TEXT, Config, ConfigError, RewardCfg, ToolCfg, to_dict
from r1kit.config_checks import validate

# ---------------------------------------------------------------- building from dicts


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return f"one of {list(typing.get_args(tp))}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads 5e-5 as a string
    if tp is bool and not isinstance(value, bool) or not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data: Any, prefix: str = ""):
    """Instantiate dataclass `cls` from a mapping, failing on unknown keys with their dotted names."""
    if isinstance(data, cls):
        return data
    if cls is RewardCfg and isinstance(data, dict):
        data = _reward_entry(data, prefix)
    if cls is ToolCfg:
        data = _tool_entry(data, prefix)
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key {where!r}; expected one of {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _reward_entry(entry: dict, key: str) -> dict:
    """Recipe shorthand: extra keys of a reward entry are that function's parameters."""
    if "name" not in entry:
        raise ConfigError(f"{key}: a reward entry needs a 'name', got {entry!r}")
    params = {k: v for k, v in entry.items() if k not in ("name", "weight", "params")}
    return {"name": entry["name"], "weight": entry.get("weight", 1.0), "params": {**entry.get("params", {}), **params}}


def _tool_entry(entry: Any, key: str) -> Any:
    """Recipe shorthand: a tool is a name, or a mapping whose extra keys are its parameters."""
    if isinstance(entry, str):
        return {"name": entry}
    if isinstance(entry, dict):
        if "name" not in entry:
            raise ConfigError(f"{key}: a tool entry needs a 'name', got {entry!r}")
        params = {k: v for k, v in entry.items() if k not in ("name", "params")}
        return {"name": entry["name"], "params": {**entry.get("params", {}), **params}}
    return entry


def apply_override(tree: dict, override: str) -> None:
    """Apply one ``a.b=c`` override to a nested dict; the value is parsed as YAML (``1e-4``, ``true``, ``[a]``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    try:
        value = read_yaml(raw, f"override {dotted!r}") if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    if isinstance(value, str) and _looks_like_float(raw):
        value = float(raw)  # YAML 1.1 reads "1e-4" as a string
    node, parts = tree, dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and isinstance(node.get(part), (dict, list)):
            node = node[part]
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(parts[: i + 1])!r} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not (last.isdigit() and int(last) < len(node)):
            raise ConfigError(f"override {dotted!r}: {last!r} is not an index of that list")
        node[int(last)] = value
    else:
        node[last] = value  # unknown keys are caught when the dataclasses are built


def _looks_like_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


# TRL's GRPOConfig names a recipe or override may use for r1kit's (TRL's default clip_max is 3.0, r1kit's is_cap 2.0)
TRL_ALGO_NAMES = {"vllm_importance_sampling_correction": "is_correction", "vllm_importance_sampling_mode": "is_mode",
                  "vllm_importance_sampling_clip_max": "is_cap", "vllm_importance_sampling_cap": "is_cap",
                  "vllm_importance_sampling_clip_min": "is_min"}


def _rename_trl_names(recipe: dict, where: str) -> None:
    """algo.<TRL name> -> algo.<r1kit name> in a recipe; both for one knob is an error."""
    algo = recipe.get("algo")
    for trl, ours in TRL_ALGO_NAMES.items():
        if isinstance(algo, dict) and trl in algo:
            if ours in algo:
                raise ConfigError(f"{where}: algo.{trl} is TRL's name for algo.{ours}; set only one of them")
            algo[ours] = algo.pop(trl)


def _rename_trl_override(override: str) -> str:
    key, sep, value = override.partition("=")
    section, _, last = key.rpartition(".")
    return f"algo.{TRL_ALGO_NAMES[last]}{sep}{value}" if section == "algo" and last in TRL_ALGO_NAMES else override


def load_recipe(path: str | Path | None = None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Defaults <- recipe YAML (if any) <- overrides, then validate()."""
    tree = to_dict(base or Config())
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"recipe {str(path)!r} is a directory; expected a YAML recipe file")
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} not found")
        try:
            recipe = read_yaml(path.read_text(encoding="utf-8"), f"recipe {str(path)!r}") or {}
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {str(path)!r} is not a text file (not UTF-8); expected a YAML recipe") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping at the top level")
        _rename_trl_names(recipe, str(path))
        _merge(tree, recipe)
    for override in overrides:
        apply_override(tree, _rename_trl_override(override))
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"{loader.r1kit_source}: key {key!r} appears twice (line {seen[key]} and line "
                              f"{key_node.start_mark.line + 1}); keep one")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(text: str, source: str):
    """`text` parsed as PyYAML's safe_load does, refusing duplicate keys (ConfigError naming `source`, key, lines)."""
    loader = _UniqueKeyLoader(text)
    loader.r1kit_source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def _merge(tree: dict, update: dict) -> None:
    """Deep-merge `update` into `tree`; lists (like rewards) are replaced whole."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict) and key != "params":
            _merge(tree[key], value)
        else:
            tree[key] = value


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the config with the algorithm preset resolved, so the file says what the run really did."""
    tree = to_dict(cfg)
    tree["algo"] = to_dict(cfg.resolved_algo())
    Path(path).write_text(yaml.safe_dump(tree, sort_keys=False))
