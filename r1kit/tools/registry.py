"""Tools are plain Python functions: type hints and a docstring give their JSON schema.

A recipe names them like rewards, by a built-in name or a dotted path to the user's own function::

    tools: [calculator, {name: mytools.lookup}, {name: python, timeout_s: 5}]

The schema is transformers' `get_json_schema` (what TRL's GRPOTrainer(tools=...) uses, and what chat
templates with a tool format render into the system prompt). Everything is checked when the recipe
loads, before any model: a name that resolves to something other than a function, or a function
without a docstring or type hints, is one line naming the tool. Importing a user's module runs its
code: a recipe that names tools is code (docs/tools.md).

A call never raises into the rollout: an unknown tool, arguments that do not fit the signature, and
a tool that raises all become an error message the policy reads (`ToolResult.error`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from r1kit.config import ConfigError

MAX_RESULT_CHARS = 2000  # a tool's answer the policy reads is cut here (a tool may return a whole file)


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}


@dataclass
class ToolResult:
    content: str  # what the policy reads in the tool message
    error: bool = False


@dataclass
class Toolbox:
    """The run's tools by name; `call` turns every failure into an error result."""

    tools: dict[str, Tool] = field(default_factory=dict)

    @property
    def schemas(self) -> list[dict]:
        return [t.schema for t in self.tools.values()]

    def call(self, name: str, args: tuple = (), kwargs: dict | None = None) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(f"error: unknown tool {name!r}; available: {', '.join(sorted(self.tools))}", True)
        try:
            inspect.signature(tool.fn).bind(*args, **(kwargs or {}))
        except TypeError as e:
            return ToolResult(f"error: bad arguments for {name}: {e}", True)
        try:
            value = tool.fn(*args, **(kwargs or {}))
        except Exception as e:  # the tool's failure is the policy's observation, not the run's
            return ToolResult(f"error: {name} raised {type(e).__name__}: {e}"[:MAX_RESULT_CHARS], True)
        if isinstance(value, ToolResult):
            return ToolResult(value.content[:MAX_RESULT_CHARS], value.error)
        return ToolResult(str(value)[:MAX_RESULT_CHARS])


def tool_from_function(fn: Any, where: str) -> Tool:
    """A Tool from a plain function, or a ConfigError naming `where` and what is wrong."""
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        raise ConfigError(f"{where}: a tool must be a Python function with type hints and a docstring, "
                          f"got {type(fn).__name__}")
    if not inspect.getdoc(fn):
        raise ConfigError(f"{where}: tool {fn.__name__!r} has no docstring (its description and argument "
                          "descriptions come from it)")
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(fn)
    except Exception as e:  # transformers raises its own error types for missing hints or arg docs
        raise ConfigError(f"{where}: tool {fn.__name__!r} has no usable schema ({type(e).__name__}: {e})") from None
    return Tool(fn.__name__, fn, schema)


def builtin_tools() -> dict[str, Callable[[dict], Any]]:
    """Built-in tool names -> factories taking the entry's parameters."""
    from r1kit.tools.calculator import calculator
    from r1kit.tools.sandbox import python_tool

    return {"calculator": lambda params: _no_params(calculator, params), "python": python_tool}


def _no_params(fn, params: dict):
    if params:
        raise ConfigError(f"tool {fn.__name__!r} takes no parameters, got {sorted(params)}")
    return fn


def load_toolbox(entries: list) -> Toolbox:
    """The recipe's `tools` entries (ToolCfg) as a Toolbox; every error is one ConfigError line."""
    from r1kit.rewards.registry import UnknownRewardError, _import_path

    box, builtins = Toolbox(), builtin_tools()
    for i, entry in enumerate(entries):
        where = f"tools[{i}] ({entry.name})"
        if entry.name in builtins:
            try:
                fn = builtins[entry.name](dict(entry.params))
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        elif "." in entry.name or ":" in entry.name:
            if entry.params:
                raise ConfigError(f"{where}: parameters are for built-in tools only, got {sorted(entry.params)}")
            try:
                fn = _import_path(entry.name)  # rewards' loader: the same rules for dotted paths and ./modules
            except UnknownRewardError as e:
                raise ConfigError(f"{where}: cannot load tool ({e.__cause__}); expected a built-in or an importable "
                                  "'package.module:function'") from None
            except TypeError:
                raise ConfigError(f"{where}: not callable; a tool must be a Python function with type hints and a "
                                  "docstring") from None
        else:
            raise ConfigError(f"{where}: unknown tool; built-in: {', '.join(sorted(builtins))}, or a dotted path "
                              "'package.module:function' to your own")
        tool = tool_from_function(fn, where)
        if tool.name in box.tools:
            raise ConfigError(f"{where}: a tool named {tool.name!r} is already listed")
        box.tools[tool.name] = tool
    return box
