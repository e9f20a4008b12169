"""Reading tool calls from the policy's turn, in one of two formats (rollout.tool_call_format).

template  the chat template's own format. r1kit knows the Hermes/Qwen2.5 one, which a template that
          defines tools announces by rendering ``<tool_call>`` around JSON::

              <tool_call>
              {"name": "calculator", "arguments": {"expression": "12+5"}}
              </tool_call>

plain     for models whose template has no tool format (the tiny char model): a Python-style call with
          literal arguments between the same tags, shorter to write than JSON::

              <tool_call>calculator("12+5")</tool_call>
              <tool_call>lookup(city="Paris", year=2020)</tool_call>

          Arguments are read with `ast.literal_eval` (numbers, strings, lists, dicts, booleans, None);
          nothing is evaluated. Positional arguments bind in the function's parameter order.

In both, the policy ends its turn after its calls (the end-of-turn token); r1kit answers each call with
a tool message (r1kit.rollout.multiturn). A turn with ``<tool_call>`` that does not parse is a call that
failed: the error is the tool message, and the policy may try again.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

from r1kit.config import ConfigError

CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
OPEN = "<tool_call>"


@dataclass
class ParsedCall:
    name: str | None  # None when the call could not be read
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    error: str | None = None  # why it could not be read


def parse_hermes(body: str) -> ParsedCall:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        return ParsedCall(None, error=f"error: the tool call is not valid JSON ({e.msg} at character {e.pos})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ParsedCall(None, error='error: a tool call must be {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        return ParsedCall(None, error="error: a tool call's arguments must be a JSON object")
    return ParsedCall(call["name"], kwargs=arguments)


def parse_plain(body: str) -> ParsedCall:
    try:
        node = ast.parse(body.strip(), mode="eval").body
    except SyntaxError as e:
        return ParsedCall(None, error=f"error: the tool call is not name(arguments) ({e.msg})")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return ParsedCall(None, error="error: a tool call must look like name(arguments)")
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ParsedCall(None, error="error: tool call arguments must be literals (numbers, strings, lists, ...)")
    if len(kwargs) != len(node.keywords):
        return ParsedCall(None, error="error: **arguments are not allowed in a tool call")
    return ParsedCall(node.func.id, args, kwargs)


PARSERS = {"template": parse_hermes, "plain": parse_plain}


def parse_calls(text: str, call_format: str) -> list[ParsedCall]:
    """Every call in one turn's text, in order; an opened but unclosed call is one failed call."""
    parse = PARSERS[call_format]
    calls = [parse(body) for body in CALL.findall(text)]
    if text.count(OPEN) > len(calls):
        calls.append(ParsedCall(None, error="error: <tool_call> without its closing </tool_call>"))
    return calls


def check_call_format(tokenizer, call_format: str, model_name: str) -> None:
    """At load: `template` needs a chat template that renders tool calls as <tool_call> (Hermes/Qwen2.5)."""
    if call_format not in PARSERS:
        raise ConfigError(f"rollout.tool_call_format must be one of {sorted(PARSERS)}, got {call_format!r}")
    if call_format == "plain":
        return
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        template = template.get("tool_use") or template.get("default") or ""
    if OPEN not in template:
        raise ConfigError(f"{model_name}: the chat template defines no tool-call format r1kit reads (<tool_call> "
                          "JSON, as Qwen2.5/Hermes); set rollout.tool_call_format=plain (docs/tools.md)")
