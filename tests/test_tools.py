"""Tools (r1kit.tools): the calculator, loading and validation, call parsing, and a Qwen2.5 template with tools."""

import json
from pathlib import Path

import pytest
import torch

from r1kit.config import ConfigError, ToolCfg
from r1kit.recipe import load_recipe
from r1kit.tools.calculator import calculator
from r1kit.tools.calls import check_call_format, parse_calls
from r1kit.tools.registry import Toolbox, load_toolbox, tool_from_function

QWEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "qwen2.5-0.5b-instruct"
if not QWEN.is_dir():
    QWEN = Path("/work/shared/data/tokenizers/qwen2.5-0.5b-instruct")


@pytest.mark.parametrize("expression, result", [
    ("12+5-3", "14"),
    ("0.1 + 0.2", "0.3"),  # exact decimals, not binary floats
    ("7 / 3", "7/3"),  # no finite decimal form: a fraction
    ("1/8", "0.125"),
    ("-(2**10) // 3", "-342"),  # floor division rounds down, as Python's
    ("2 ** -2", "0.25"),
    ("(1/3) * 3", "1"),
    ("10 % 4 * 1.5", "3"),
    ("123456789 * 987654321", "121932631112635269"),
])
def test_calculator_is_exact(expression, result):
    assert calculator(expression) == result


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('id')", "not allowed"),  # calls: never evaluated
    ("x + 1", "not allowed"),  # names
    ("'a' * 3", "not allowed"),  # strings
    ("1 / 0", "division by zero"),
    ("2 ** 0.5", "exponents must be integers"),
    ("9 ** 9 ** 9", "exponents must be integers"),  # would not fit in memory
    ("(10 ** 999) ** 999", "longer than"),
    ("1 +", "not an arithmetic expression"),
])
def test_calculator_refuses(expression, message):
    with pytest.raises(ValueError, match=message):
        calculator(expression)


def lookup(city: str, year: int = 2020) -> str:
    """Population of a city.

    Args:
        city: the city's name
        year: the census year
    """
    if city == "Atlantis":
        raise KeyError(city)
    return f"{city}:{year}"


def no_doc(x: int) -> int:
    return x


def test_schema_comes_from_hints_and_docstring():
    tool = tool_from_function(lookup, "tools[0]")
    params = tool.schema["function"]["parameters"]
    assert tool.schema["function"]["name"] == "lookup" and params["required"] == ["city"]
    assert params["properties"]["year"] == {"type": "integer", "description": "the census year"}


def test_calls_never_raise():
    box = Toolbox({"lookup": tool_from_function(lookup, "t")})
    assert box.call("lookup", ("Paris",), {"year": 1900}).content == "Paris:1900"
    assert box.call("lookup", ("Atlantis",)).content == "error: lookup raised KeyError: 'Atlantis'"
    assert box.call("lookup", (), {"town": "x"}).error and box.call("search").error


@pytest.fixture()
def user_tools(tmp_path, monkeypatch):
    (tmp_path / "mytools_t.py").write_text(
        "def good(a: int) -> int:\n    '''Double.\n\n    Args:\n        a: a number\n    '''\n    return 2 * a\n\n"
        "def bare(a: int) -> int:\n    return a\n\nnot_a_function = 3\n\n"
        "class Callable:\n    '''A class.'''\n    def __call__(self, a: int) -> int:\n        return a\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("entry, message", [
    ("mytools_t.bare", "has no docstring"),
    ("mytools_t.not_a_function", "not callable"),
    ("mytools_t.Callable", "must be a Python function"),
    ("mytools_t.missing", "cannot load tool"),
    ("search", "unknown tool; built-in: calculator, python"),
    ({"name": "calculator", "precision": 3}, "takes no parameters"),
    ({"name": "python", "timeout": 3}, "unknown parameter"),
    ({"name": "python", "isolation": "chroot"}, "isolation must be"),
])
def test_a_bad_tool_is_one_line_at_load(user_tools, entry, message):
    cfg = load_recipe(None, [f"tools=[{json.dumps(entry)}]", "train.max_steps=0"])
    with pytest.raises(ConfigError, match=message) as info:
        load_toolbox(cfg.tools)
    assert "\n" not in str(info.value) and str(info.value).startswith("tools[0]")


def test_recipe_names_tools_like_rewards(user_tools):
    cfg = load_recipe(None, ["tools=[calculator, {name: mytools_t.good}]"])
    assert cfg.tools == [ToolCfg("calculator"), ToolCfg("mytools_t.good")]
    box = load_toolbox(cfg.tools)
    assert sorted(box.tools) == ["calculator", "good"] and box.call("good", (4,)).content == "8"
    with pytest.raises(ConfigError, match="already listed"):
        load_toolbox(load_recipe(None, ["tools=[calculator, calculator]"]).tools)
    with pytest.raises(ConfigError, match="rollout.engine=hf only"):
        load_recipe(None, ["tools=[calculator]", "rollout.engine=vllm"])


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>calculator("1+2")</tool_call>', [("calculator", ("1+2",), {})]),
    ('a<tool_call>f(1, x=[2, "y"])</tool_call>b<tool_call>g()</tool_call>', [("f", (1,), {"x": [2, "y"]}), ("g", (), {})]),
    ("no call at all", []),
])
def test_plain_format(text, expected):
    assert [(c.name, c.args, c.kwargs) for c in parse_calls(text, "plain")] == expected


@pytest.mark.parametrize("text, error", [
    ('<tool_call>calculator(__import__("os"))</tool_call>', "must be literals"),  # nothing is evaluated
    ("<tool_call>1+2</tool_call>", "must look like name(arguments)"),
    ("<tool_call>f(**k)</tool_call>", "**arguments are not allowed"),
    ('<tool_call>f("x"</tool_call>', "not name(arguments)"),
    ('<tool_call>f("x")', "without its closing"),
])
def test_plain_format_errors(text, error):
    (call,) = parse_calls(text, "plain")
    assert call.name is None and error in call.error


@pytest.mark.parametrize("body, expected", [
    ('{"name": "calculator", "arguments": {"expression": "1+2"}}', ("calculator", {"expression": "1+2"}, None)),
    ('{"name": "f", "arguments": "{\\"a\\": 1}"}', ("f", {"a": 1}, None)),  # arguments sent as a JSON string
    ('{"name": "f", "arguments": {"a": 1}', (None, {}, "not valid JSON")),
    ('["f"]', (None, {}, "must be {")),
    ('{"name": "f", "arguments": [1]}', (None, {}, "must be a JSON object")),
])
def test_template_format(body, expected):
    (call,) = parse_calls(f"<tool_call>\n{body}\n</tool_call>", "template")
    assert call.name == expected[0] and call.kwargs == expected[1]
    assert (call.error is None) if expected[2] is None else expected[2] in call.error


def test_a_template_without_tool_format_needs_plain(tiny_tokenizer):
    with pytest.raises(ConfigError, match="set rollout.tool_call_format=plain"):
        check_call_format(tiny_tokenizer, "template", "builtin:tiny-sft")
    check_call_format(tiny_tokenizer, "plain", "builtin:tiny-sft")


# ---------------------------------------------------------------- Qwen2.5's real chat template with tools

needs_qwen = pytest.mark.skipif(not QWEN.is_dir(), reason="the shared Qwen2.5 tokenizer is not present")


@pytest.fixture(scope="module")
def qwen():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN))


@pytest.fixture(scope="module")
def qwen_model(qwen):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(qwen), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=qwen.eos_token_id, pad_token_id=qwen.pad_token_id)
    return Qwen2ForCausalLM(config).eval()


def conversation(schema: dict) -> tuple[list[dict], list[dict]]:
    user = [{"role": "user", "content": "What is 312+415?"}]
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": {"expression": "312+415"}}}]}
    return user, [call, {"role": "tool", "content": "727"}]


@needs_qwen
def test_qwen_prompt_call_and_tool_message_match_its_template(qwen):
    """The prompt carries the tools' schemas; the template's own rendering of a call parses back; and prompt +
    the policy's call turn + the inserted tool message are token for token what the template makes of the
    whole conversation: nothing the policy sampled is re-tokenized."""
    from r1kit.data.templates import encode_prompt
    from r1kit.rollout.multiturn import ToolMessages
    from r1kit.tools.registry import ToolResult

    check_call_format(qwen, "template", "qwen")
    schema = tool_from_function(calculator, "t").schema
    user, rest = conversation(schema)
    prompt = encode_prompt(qwen, user, "chat", [schema])
    assert '"name": "calculator"' in qwen.decode(prompt) and "<tools>" in qwen.decode(prompt)
    whole = qwen.apply_chat_template(user + rest, tools=[schema], tokenize=False, add_generation_prompt=True)
    prompt_text = qwen.decode(prompt)
    turn_text = whole[len(prompt_text):whole.index("<|im_end|>", len(prompt_text))]  # the assistant's call, as written
    (call,) = parse_calls(turn_text, "template")
    assert (call.name, call.kwargs) == ("calculator", {"expression": "312+415"})
    turn = qwen(turn_text, add_special_tokens=False).input_ids + [qwen.eos_token_id]
    inserted = ToolMessages(qwen).ids([ToolResult("727")])
    assert qwen.decode(inserted) == "\n<|im_start|>user\n<tool_response>\n727\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert prompt + turn + inserted == qwen(whole, add_special_tokens=False).input_ids


class FirstTurnScripted:
    """Turn 1 is a scripted tool call (as a Qwen model that learned tools would write it); later turns are the
    random Qwen2 model's, sampled by the HF engine."""

    def __init__(self, engine, turn: list[int]):
        self.engine, self.turn, self.first = engine, turn, True

    def generate(self, prompts, n, sampling):
        from r1kit.types import Completion

        if self.first:
            self.first = False
            return [Completion(i, list(self.turn), "", "stop", [0.0] * len(self.turn))
                    for i in range(len(prompts)) for _ in range(n)]
        return self.engine.generate(prompts, n, sampling)

    def update_weights(self, model):
        pass

    def close(self):
        pass


@needs_qwen
def test_qwen_multiturn_rollout_logprobs(qwen, qwen_model):
    """A random Qwen2 model on the real tokenizer continues after the template's tool message; its sampled tokens'
    logprobs equal the trainer's on the same multi-turn sequence."""
    from r1kit.batch import completion_logprobs, make_batch
    from r1kit.data.templates import encode_prompt
    from r1kit.rollout.hf import HFEngine
    from r1kit.rollout.multiturn import MultiTurnEngine
    from r1kit.types import SamplingParams

    schema = tool_from_function(calculator, "t").schema
    user, _ = conversation(schema)
    prompt = encode_prompt(qwen, user, "chat", [schema])
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "312+415"}}\n</tool_call>'
    turn = qwen(call, add_special_tokens=False).input_ids + [qwen.eos_token_id]
    engine = MultiTurnEngine(FirstTurnScripted(HFEngine(qwen_model, qwen), turn), qwen,
                             Toolbox({"calculator": tool_from_function(calculator, "t")}), "template", 4, 4)
    out = engine.generate([prompt], 2, SamplingParams(max_new_tokens=80, seed=0))
    for c in out:
        assert c.tool_calls == 1 and c.tool_errors == 0 and "<tool_response>\n727\n</tool_response>" in c.text
        assert c.token_ids[:len(turn)] == turn and c.policy_mask.count(0) == len(qwen(
            "\n<|im_start|>user\n<tool_response>\n727\n</tool_response><|im_end|>\n<|im_start|>assistant\n").input_ids)
    batch = make_batch(out, [{"prompt_ids": prompt}], torch.zeros(2), qwen.pad_token_id)
    second = torch.zeros_like(batch.completion_mask, dtype=torch.bool)
    second[:, len(turn):] = batch.completion_mask[:, len(turn):].bool()  # the model's own turn (turn 1 is scripted)
    with torch.no_grad():
        trainer = completion_logprobs(qwen_model, batch, 1.0)
    assert second.sum() > 0
    assert (trainer - batch.engine_logprobs)[second].abs().max().item() <= 1e-5


def test_cli_refuses_bad_tool_setups_in_one_line(small_model_dir, tmp_path, capsys):
    """Before any model loads: a template without a tool format, a tool that is not a function, commands that
    do not run tools yet."""
    from r1kit.cli import main

    assert main(["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=a",
                 "tools=[calculator]"]) == 2
    assert "set rollout.tool_call_format=plain" in capsys.readouterr().err
    assert main(["eval", small_model_dir, "tools=[calculator]", "data.eval_size=2"]) == 2
    assert "set rollout.tool_call_format=plain" in capsys.readouterr().err
    assert main(["train", f"output_dir={tmp_path}", "name=b", "tools=[{name: os.path.join}]"]) == 2
    assert "tools[0] (os.path.join)" in capsys.readouterr().err  # no docstring-described arguments: no schema
    assert main(["generate", f"model.name_or_path={small_model_dir}", "tools=[calculator]",
                 "rollout.tool_call_format=plain"]) == 2
    assert "r1kit generate does not run tools yet" in capsys.readouterr().err
