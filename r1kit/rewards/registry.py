"""Reward registry and combination: name -> function, parameter binding, weighted sum.

The contract is TRL's (r1kit.rewards.contract says exactly what is passed), so users bring their TRL
and open-r1 rewards unchanged. Every function is called with keyword arguments only::

    fn(prompts=..., completions=..., completion_ids=..., **dataset_columns, [trainer_state=..., ...])
        -> list[float | None]

``completions`` has one entry per sampled completion (B*G of them): its text, or with chat
prompts ``[{"role": "assistant", "content": text}]`` as TRL passes it. Every dataset column
(``answer``, ``question``, ...) arrives as a keyword list of the same length. Functions must accept
``**kwargs`` and ignore what they do not use; they may be ``async def``. ``None`` means "does not
apply" (e.g. no gold answer for this row) and contributes 0 to the total.

A recipe chooses rewards by name with a weight and parameters::

    rewards: [{name: accuracy, weight: 1.0}, {name: format, weight: 0.2, mode: strict}]

``build_rewards`` turns that list into ``(label, bound_fn, weight)`` triples for ``combine``; a built-in's
parameters out of range fail there, at load (``register(name, check=...)``).
The built-ins register themselves when the package is imported (its ``__init__`` imports the catalog),
so this module imports none of them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

from r1kit.config import FLOAT_TEXT
from r1kit.rewards.contract import call_rewards
from r1kit.rewards.errors import UnknownRewardError

RewardFn = Callable[..., list]  # fn(*, completions, **columns) -> list[float | None], or a coroutine of it
ParamCheck = Callable[..., None]  # check(**the reward's parameters) raises ValueError naming one out of range

_REGISTRY: dict[str, RewardFn] = {}
_PARAM_CHECKS: dict[str, ParamCheck] = {}  # the function's qualified name -> its parameters' check


def register(name: str, check: ParamCheck | None = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward function under ``name`` and return it unchanged.

    ``check``, when given, is called by ``bind`` with every parameter of the function that has a default
    (the recipe's values over the defaults) and raises ValueError for one out of range, so a bad value fails
    at load; the function calls it too, for callers that skip ``bind``.
    Registering a different function under a taken name raises ValueError, so two rewards cannot
    silently shadow each other. Re-registering the same function (a module reload) is allowed.
    """

    def decorator(fn: RewardFn) -> RewardFn:
        old = _REGISTRY.get(name)
        if old is not None and _qualname(old) != _qualname(fn):
            raise ValueError(f"reward {name!r} is already registered to {_qualname(old)}")
        _REGISTRY[name] = fn
        if check is not None:
            _PARAM_CHECKS[_qualname(fn)] = check
        return fn

    return decorator


def _qualname(fn: Any) -> str:
    """``module.qualname`` of a function, for messages and duplicate checks."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def available_rewards() -> list[str]:
    """Sorted names of all registered rewards."""
    return sorted(_REGISTRY)


def _import_path(path: str) -> RewardFn:
    """Resolve ``"pkg.mod:fn"`` (attribute may be dotted) or ``"pkg.mod.fn"`` to a callable."""
    if ":" in path:
        module_name, attr_path = path.split(":", 1)
    else:
        module_name, _, attr_path = path.rpartition(".")
    if os.getcwd() not in sys.path:  # `myrewards.fn` finds ./myrewards.py, after installed modules of that name
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UnknownRewardError(
            f"cannot load reward {path!r}: {e}; expected a registered name "
            f"({', '.join(available_rewards())}) or 'package.module:function'"
        ) from e
    if not callable(obj):
        raise TypeError(f"reward {path!r} resolved to {type(obj).__name__}, which is not callable")
    return obj


def get_reward(name_or_path: str) -> RewardFn:
    """Return the reward registered as ``name_or_path``, or import it as a dotted path.

    Dotted paths name a user's function: ``"mypkg.rewards:my_fn"`` or ``"mypkg.rewards.my_fn"``,
    importable from the installed packages or, after them, the current working directory (so
    ``myrewards.fn`` finds ``./myrewards.py`` without PYTHONPATH). Importing runs the module's code:
    a recipe is code (docs/recipes.md, "Recipes are code").
    Raises UnknownRewardError (a KeyError and a ValueError) naming the bad name and listing the
    registered ones.
    """
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    if "." in name_or_path or ":" in name_or_path:
        return _import_path(name_or_path)
    raise UnknownRewardError(
        f"unknown reward {name_or_path!r}; available: {', '.join(available_rewards())} "
        f"(or a dotted path 'package.module:function')"
    )


def accepted_params(fn: RewardFn) -> list[str]:
    """Names ``fn`` accepts as keyword parameters, excluding ``completions`` and ``**kwargs``.

    ``**kwargs`` is left out on purpose: every reward has it (to ignore unknown columns), so
    counting it would let any typo through ``bind``.
    """
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind in kinds and p.name != "completions"]


def bind(fn: RewardFn, params: Mapping[str, Any], name: str | None = None) -> RewardFn:
    """Return ``fn`` with ``params`` fixed as keyword arguments (a ``functools.partial``).

    Every key must be a named parameter of ``fn``, and a parameter annotated ``Literal[...]`` must
    get one of its values (``checker: numerc`` fails here, at load, not at step 1); ``fn`` must take
    ``**kwargs``. Otherwise ValueError names the reward, the key and the accepted keys or values.
    The partial keeps ``fn``'s ``__name__`` and docstring.
    """
    label = name or getattr(fn, "__name__", repr(fn))
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        raise ValueError(f"reward {label!r} ({_qualname(fn)}) must accept **kwargs: every reward is also given the "
                         "dataset's columns, prompts, completion_ids and trainer_state (TRL's contract)")
    accepted = accepted_params(fn)
    hints = _hints(fn)
    choices = _literal_choices(hints)
    for key, value in dict(params).items():
        if key not in accepted:
            raise ValueError(
                f"reward {label!r} has no parameter {key!r}; "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
        if isinstance(value, str) and hints.get(key) in (float, float | None) and FLOAT_TEXT.fullmatch(value.strip()):
            params = {**params, key: float(value)}  # PyYAML reads 5e-5 as a string
        elif key in choices and value not in choices[key]:
            raise ValueError(f"reward {label!r}: {key}={value!r} is not a valid value; expected one of {choices[key]}")
    _check_params(fn, params, label)
    bound = functools.partial(fn, **params)
    functools.update_wrapper(bound, fn)
    return bound


def _check_params(fn: RewardFn, params: Mapping[str, Any], label: str) -> None:
    """Run the registered range check of ``fn`` (``register(check=...)``) on its defaults overridden by
    ``params``; a ValueError (or the TypeError of a value of the wrong kind) names the reward."""
    check = _PARAM_CHECKS.get(_qualname(fn))
    if check is None:
        return
    defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                if p.default is not inspect.Parameter.empty}
    try:
        check(**{**defaults, **params})
    except (ValueError, TypeError) as e:
        raise ValueError(f"reward {label!r}: {e}") from None


def _hints(fn: RewardFn) -> dict[str, Any]:
    """``fn``'s resolved annotations; {} when a user's annotation does not resolve (nothing to check)."""
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError):
        return {}


def _literal_choices(hints: dict[str, Any]) -> dict[str, list]:
    """Parameter -> allowed values, for parameters annotated ``Literal[...]`` (or ``Literal[...] | None``)."""
    choices = {}
    for key, tp in hints.items():
        options = typing.get_args(tp) if typing.get_origin(tp) is not Literal else (tp,)
        literals = [a for o in options if typing.get_origin(o) is Literal for a in typing.get_args(o)]
        if literals:
            choices[key] = literals + ([None] if type(None) in options else [])
    return choices


_SPEC_KEYS = ("name", "weight", "label")  # every other key of a spec is a parameter


def _default_label(name: str, fn: RewardFn) -> str:
    """The registered name, or for a dotted path the function's own name (as TRL labels it)."""
    return name if name in _REGISTRY else getattr(fn, "__name__", name)


def build_rewards(specs: Sequence[Mapping[str, Any]]) -> list[tuple[str, RewardFn, float]]:
    """Turn recipe entries ``{name, weight=1.0, label=None, **params}`` into ``combine`` triples.

    The label (used in metrics) defaults to the registered name, or the function's name for a
    dotted path. Two entries with the same label (say two ``format`` rewards) need a ``label``.
    """
    funcs: list[tuple[str, RewardFn, float]] = []
    for spec in specs:
        if "name" not in spec:
            raise ValueError(f"reward entry {dict(spec)!r} has no 'name'")
        fn = get_reward(spec["name"])
        label = spec.get("label") or _default_label(spec["name"], fn)
        if label in {f[0] for f in funcs}:
            raise ValueError(f"two rewards are labelled {label!r}; give one a distinct 'label'")
        params = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
        funcs.append((label, bind(fn, params, name=spec["name"]), float(spec.get("weight", 1.0))))
    return funcs


# ---------------------------------------------------------------------------------------------
# Combination
# ---------------------------------------------------------------------------------------------


@dataclass
class RewardResult:
    """Rewards for one batch of N completions.

    total:    (N,) weighted sum over functions; a None counts as 0 (like TRL's nansum).
    per_func: label -> (N,) raw, unweighted outputs; None where the function does not apply
              or, with ``on_error="none"``, where it raised.
    errors:   label -> number of times the function raised on this batch (0 or 1 per call).
    """

    total: list[float]
    per_func: dict[str, list[float | None]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    logged: dict[str, list[float]] = field(default_factory=dict)  # log_metric(name, value) calls, per call
    extra_columns: dict[str, list] = field(default_factory=dict)  # log_extra(column, values): (N,) each

    def metrics(self, prefix: str = "rewards") -> dict[str, float]:
        """Flat per-reward metrics: mean/std over applicable values, and error counts.

        Keys follow TRL: ``rewards/<label>/mean``, ``rewards/<label>/std``, plus
        ``rewards/<label>/errors`` and ``reward`` (mean total). An empty column reports NaN.
        """
        out = {"reward": _mean(self.total), **{name: _mean(v) for name, v in self.logged.items()}}
        for label, values in self.per_func.items():
            vals = [v for v in values if v is not None]
            out[f"{prefix}/{label}/mean"] = _mean(vals)
            out[f"{prefix}/{label}/std"] = _std(vals)
            out[f"{prefix}/{label}/errors"] = float(self.errors.get(label, 0))
        return out

    def select(self, indices) -> "RewardResult":
        """The results of the completions at `indices`, in that order (errors are per call: kept)."""
        idx = list(indices)
        return RewardResult([self.total[i] for i in idx], {k: [v[i] for i in idx] for k, v in self.per_func.items()},
                            dict(self.errors), dict(self.logged),
                            {k: [v[i] for i in idx] for k, v in self.extra_columns.items()})

    @staticmethod
    def concat(results: Sequence["RewardResult"]) -> "RewardResult":
        """Several batches' results as one (errors summed over the calls)."""
        labels = list(results[0].per_func)
        logged = {k: [x for r in results for x in r.logged.get(k, [])] for r0 in results for k in r0.logged}
        extra = {k: [x for r in results for x in r.extra_columns.get(k, [None] * len(r.total))]
                 for r0 in results for k in r0.extra_columns}
        return RewardResult([t for r in results for t in r.total],
                            {k: [v for r in results for v in r.per_func[k]] for k in labels},
                            {k: sum(r.errors.get(k, 0) for r in results) for k in labels}, logged, extra)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    """Population std, NaN when empty (a single value has std 0)."""
    if not xs:
        return math.nan
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def _validate_output(label: str, out: Any, n: int) -> list[float | None]:
    """Check a reward's return value and convert entries to float or None.

    A list or tuple, or anything with ``.tolist()`` (a numpy array, a torch tensor: duck-typed, so
    this module never imports either); entries are numbers, None, or numpy/torch scalars
    (``.item()``). A wrong type or length, or an infinite value, raises regardless of
    ``on_error``: that is a bug in the function, not a flaky input, and scoring the batch as None
    would train on zeros without a sound (an inf would turn every advantage into NaN).
    NaN is read as None, since TRL uses NaN internally for "does not apply".
    """
    if not isinstance(out, (list, tuple)) and callable(getattr(out, "tolist", None)):
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise TypeError(f"reward {label!r} returned {type(out).__name__}, expected a list")
    if len(out) != n:
        raise ValueError(f"reward {label!r} returned {len(out)} values, expected {n}")
    values: list[float | None] = []
    for i, v in enumerate(out):
        if v is not None and not isinstance(v, numbers.Real) and callable(getattr(v, "item", None)):
            v = v.item()  # a numpy or torch scalar
        if v is None:
            values.append(None)
        elif isinstance(v, numbers.Real):
            f = float(v)
            if math.isinf(f):
                raise ValueError(f"reward {label!r} returned {f} at index {i}; rewards must be finite "
                                 "(None or NaN means 'does not apply')")
            values.append(None if math.isnan(f) else f)
        else:
            raise TypeError(
                f"reward {label!r} returned {type(v).__name__} at index {i}, expected float or None"
            )
    return values


_PASSED_BY_COMBINE = ("completions", "trainer_state", "log_metric", "log_extra")


def _check_columns(columns: Mapping[str, Sequence], n: int) -> None:
    """Every column must have one entry per completion, and none may take the name of an argument
    ``combine`` passes itself."""
    clash = [key for key in _PASSED_BY_COMBINE if key in columns]
    if clash:
        raise ValueError(f"column {clash[0]!r} has the name of an argument every reward is given; rename it")
    for key, col in columns.items():
        if len(col) != n:
            raise ValueError(
                f"column {key!r} has {len(col)} entries, expected {n} (one per completion)"
            )


def combine(
    funcs: Sequence[tuple[str, RewardFn, float]],
    completions: list,
    columns: Mapping[str, list],
    on_error: str = "raise",
    state: Any = None,
) -> RewardResult:
    """Call each ``(label, fn, weight)`` on the batch as TRL does (keyword arguments only, async ones
    concurrently: r1kit.rewards.contract.call_rewards) and sum the weighted outputs.

    completions: (N,) texts or chat messages; columns: name -> (N,) list (e.g. ``answer``,
    ``prompts``; r1kit.rewards.contract.reward_inputs builds both as TRL does).
    on_error: ``"raise"`` re-raises a function's exception as RuntimeError naming it;
    ``"none"`` scores that function's whole batch as None and counts the error.
    state: when given (the trainer passes a RewardState), every function also gets TRL's
    ``trainer_state=state``, ``log_metric(name, value)`` and ``log_extra(column, values)``;
    what those two receive lands in the result's ``logged`` and ``extra_columns``.
    """
    if on_error not in ("raise", "none"):
        raise ValueError(f"on_error must be 'raise' or 'none', got {on_error!r}")
    labels = [label for label, _, _ in funcs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"reward labels must be unique, got {labels}")
    n = len(completions)
    _check_columns(columns, n)

    total = [0.0] * n
    result = RewardResult(total=total, errors={label: 0 for label in labels})
    extras = {} if state is None else {
        "trainer_state": state,
        "log_metric": lambda name, value: result.logged.setdefault(str(name), []).append(float(value)),
        "log_extra": lambda column, values: result.extra_columns.__setitem__(str(column), list(values))}
    outputs = call_rewards([(label, fn) for label, fn, _ in funcs], {"completions": completions, **columns, **extras})
    for label, _, weight in funcs:
        out = outputs[label]
        if isinstance(out, BaseException):
            if on_error == "raise":
                raise RuntimeError(f"reward {label!r} raised {type(out).__name__}: {out}") from out
            result.errors[label] += 1
            out = [None] * n
        values = _validate_output(label, out, n)
        result.per_func[label] = values
        for i, v in enumerate(values):
            if v is not None:
                total[i] += weight * v
    return result
