"""Table tests for r1kit.rewards: completions and the rewards we expect for them."""

import math
import subprocess
import sys
from pathlib import Path
import textwrap

import pytest

from r1kit.rewards import (
    RewardResult,
    UnknownRewardError,
    accuracy_reward,
    available_rewards,
    bind,
    build_rewards,
    combine,
    format_reward,
    get_reward,
    register,
)

REPO = Path(__file__).resolve().parents[1]  # so subprocesses import this checkout
GOOD = "<think>5+3=8</think>\n<answer>8</answer>"

# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, gold, extract, expected",
    [
        (GOOD, "8", "auto", 1.0),
        (GOOD, "9", "auto", 0.0),
        ("<answer>1,080</answer>", "1080", "auto", 1.0),
        ("<answer>025</answer>", "25", "auto", 1.0),
        (r"so \boxed{\frac{1}{2}}", "0.5", "auto", 1.0),
        (r"<answer>\frac{\pi}{2}</answer>", r"\pi/2", "auto", 1.0),  # math-verify
        ("<answer>18</answer>", "She pays 9*2 = 18 dollars.\n#### 18", "auto", 1.0),  # GSM8K gold
        ("<answer>1,800</answer>", "#### 1,800", "auto", 1.0),
        ("<answer>7</answer> ... <answer>8</answer>", "8", "auto", 1.0),  # last answer wins
        ("<answer>8</answer> ... <answer>7</answer>", "8", "auto", 0.0),
        ("<answer>8</answer><answer>7", "8", "auto", 0.0),  # unclosed last (cut off): the earlier one is not credited (issue 13)
        ("<answer>17+11+15+5-8</answer>", "40", "auto", 0.0),  # arithmetic handed to the checker (issue 13)
        ("<answer>43 = 42</answer>", "42", "auto", 0.0),  # a false equation ending in the gold
        ("<answer>1000001</answer>", "1000000", "auto", 0.0),  # no relative tolerance
        ("<answer>−8</answer>", "-8", "auto", 1.0),  # unicode minus
        ([{"role": "assistant", "content": [{"type": "text", "text": "<answer>8"}, {"type": "text", "text": "</answer>"}]}],
         "8", "auto", 1.0),  # content as a list of parts: joined text
        ("</answer>8<answer>", "8", "auto", 0.0),  # tags in the wrong order
        ("<think>the answer is 8</think>", "8", "tag", 0.0),  # answer only inside the reasoning
        ("<think>the answer is 8</think><answer>?</answer>", "8", "tag", 0.0),
        (r"<think>\boxed{8}</think>", "8", "tag", 0.0),
        (r"<think>\boxed{8}</think>", "8", "auto", 1.0),  # auto accepts a box
        ("the answer is 8", "8", "auto", 0.0),  # auto never takes a bare number
        ("the answer is 8", "8", "auto_last_number", 1.0),
        ("", "8", "auto", 0.0),  # empty completion
        ("<answer>八</answer>", "8", "auto", 0.0),  # unicode, no crash
        ("<answer>Paris</answer>", "Paris", "auto", 1.0),
        (GOOD, None, "auto", None),  # no gold: does not apply
        (GOOD, "", "auto", None),
        (GOOD, 8, "auto", 1.0),  # non-string gold
        ([{"role": "assistant", "content": GOOD}], "8", "auto", 1.0),  # chat-format completion
    ],
)
def test_accuracy(completion, gold, extract, expected):
    assert accuracy_reward([completion], answer=[gold], extract=extract) == [expected]


def test_accuracy_batch_ignores_unknown_columns():
    rewards = accuracy_reward(
        [GOOD, GOOD, "nothing"], answer=["8", "9", "8"], prompts=["p"] * 3, difficulty=[1, 2, 3]
    )
    assert rewards == [1.0, 0.0, 0.0]


def test_accuracy_unknown_extract_mode():
    with pytest.raises(ValueError, match="bogus"):
        accuracy_reward([GOOD], answer=["8"], extract="bogus")


# ---------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, mode, style, expected",
    [
        (GOOD, "strict", "think", 1.0),
        ("<think>a</think><answer>b</answer>", "strict", "think", 1.0),  # no whitespace between
        ("<think></think><answer>8</answer>", "strict", "think", 1.0),  # direct answer
        ("  \n<think>\na\nb\n</think>\n\n<answer>\n8\n</answer>\n", "strict", "think", 1.0),
        ("<think>a</think> x <answer>b</answer>", "strict", "think", 0.0),  # text between
        ("<think>a</think><answer>b</answer> more", "strict", "think", 0.0),  # text after
        ("<think>a</think><answer>b</answer><|pad|><|pad|>", "strict", "think", 0.0),  # no stop
        ("hi <think>a</think><answer>b</answer>", "strict", "think", 0.0),  # text before
        ("<answer>b</answer><think>a</think>", "strict", "think", 0.0),  # wrong order
        # repeated answer tag
        ("<think>a</think><answer>b</answer><answer>c</answer>", "strict", "think", 0.0),
        ("<think>a<think>b</think><answer>c</answer>", "strict", "think", 0.0),  # nested
        ("<think>a</think><answer>b", "strict", "think", 0.0),  # truncated
        ("<answer>b</answer>", "strict", "think", 0.0),
        ("", "strict", "think", 0.0),  # empty completion
        ("<think>日本語</think><answer>✓</answer>", "strict", "think", 1.0),  # unicode
        ("<reasoning>a</reasoning>\n<answer>b</answer>", "strict", "reasoning", 1.0),
        (GOOD, "strict", "reasoning", 0.0),
        ("<reasoning>a</reasoning><answer>b</answer>", "strict", "think", 0.0),
        ("hi <think>a</think> x <answer>b</answer> more", "soft", "think", 1.0),
        ("<think>a</think><answer>b</answer><answer>c</answer>", "soft", "think", 1.0),
        ("<think>\na\n</think>\n<answer>\nb\n</answer>", "soft", "think", 1.0),  # DOTALL
        ("<answer>b</answer><think>a</think>", "soft", "think", 0.0),  # wrong order
        ("<think>a</think>", "soft", "think", 0.0),
        ("", "soft", "think", 0.0),
        ("pre <reasoning>a</reasoning> <answer>b</answer>", "soft", "reasoning", 1.0),
    ],
)
def test_format(completion, mode, style, expected):
    assert format_reward([completion], mode=mode, style=style, answer=["x"]) == [expected]


@pytest.mark.parametrize("params, bad", [({"mode": "loose"}, "loose"), ({"style": "xml"}, "xml")])
def test_format_bad_option(params, bad):
    with pytest.raises(ValueError, match=bad):
        format_reward([GOOD], **params)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def test_builtins_registered():
    assert {"accuracy", "format"} <= set(available_rewards())
    assert get_reward("accuracy") is accuracy_reward
    assert get_reward("format") is format_reward


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's reward module on sys.path, as a recipe would name it."""
    pkg = tmp_path / "myrewards_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text(
        textwrap.dedent(
            """
            def length_bonus(completions, scale=1.0, **kwargs):
                return [scale * len(c) for c in completions]

            class Holder:
                @staticmethod
                def nested(completions, **kwargs):
                    return [1.0] * len(completions)

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myrewards_pkg.rewards"
    for name in [m for m in sys.modules if m.startswith("myrewards_pkg")]:
        del sys.modules[name]  # the next test's tmp_path holds a fresh copy


@pytest.mark.parametrize("sep", [":", "."])
def test_get_reward_dotted_path(user_module, sep):
    fn = get_reward(f"{user_module}{sep}length_bonus")
    assert fn(["ab", "abcd"]) == [2.0, 4.0]


def test_get_reward_dotted_nested_attribute(user_module):
    assert get_reward(f"{user_module}:Holder.nested")(["a"]) == [1.0]


def test_get_reward_dotted_not_callable(user_module):
    with pytest.raises(TypeError, match="not callable"):
        get_reward(f"{user_module}:NOT_CALLABLE")


@pytest.mark.parametrize(
    "name", ["acuracy", "no_such_pkg.rewards:fn", "myrewards_pkg.rewards:missing"]
)
def test_get_reward_unknown_names_it_and_lists_available(user_module, name):
    with pytest.raises(UnknownRewardError) as info:
        get_reward(name)
    message = str(info.value)
    assert name in message
    assert "accuracy" in message and "format" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert not message.startswith("'")  # readable, not KeyError's repr


def test_register_duplicate_name_rejected():
    with pytest.raises(ValueError, match="already registered"):

        @register("accuracy")
        def other(completions, **kwargs):
            return [0.0] * len(completions)


def test_bind_fixes_params_and_keeps_name():
    strict = bind(get_reward("format"), {"mode": "soft"})
    assert strict(["x <think>a</think> <answer>b</answer> y"]) == [1.0]
    assert strict.__name__ == "format_reward"


def test_bind_bad_key_names_reward_key_and_accepted():
    with pytest.raises(ValueError) as info:
        bind(get_reward("format"), {"mdoe": "soft"}, name="format")
    message = str(info.value)
    assert "'format'" in message and "'mdoe'" in message
    assert "mode" in message and "style" in message


def test_bind_rejects_key_swallowed_by_kwargs_only(user_module):
    """**kwargs accepts anything at call time; bind must still catch the typo."""
    fn = get_reward(f"{user_module}:length_bonus")
    with pytest.raises(ValueError, match="'scael'.*accepted: scale"):
        bind(fn, {"scael": 2.0})
    assert bind(fn, {"scale": 2.0})(["ab"]) == [4.0]


def test_build_rewards_from_recipe_entries(user_module):
    funcs = build_rewards(
        [
            {"name": "accuracy", "weight": 1.0, "extract": "tag"},
            {"name": "format", "weight": 0.2, "mode": "strict"},
            {"name": "format", "label": "format_soft", "weight": 0.1, "mode": "soft"},
            {"name": f"{user_module}:length_bonus", "scale": 0.0},
        ]
    )
    assert [(label, w) for label, _, w in funcs] == [
        ("accuracy", 1.0),
        ("format", 0.2),
        ("format_soft", 0.1),
        ("length_bonus", 1.0),
    ]
    result = combine(funcs, [GOOD], {"answer": ["8"]})
    assert result.total == [pytest.approx(1.0 + 0.2 + 0.1)]


@pytest.mark.parametrize(
    "specs, match",
    [
        ([{"name": "format"}, {"name": "format", "mode": "soft"}], "distinct 'label'"),
        ([{"weight": 1.0}], "no 'name'"),
        ([{"name": "format", "bogus": 1}], "'bogus'"),
        ([{"name": "nope"}], "unknown reward 'nope'"),
    ],
)
def test_build_rewards_errors(specs, match):
    with pytest.raises(ValueError, match=match):
        build_rewards(specs)


# ---------------------------------------------------------------------------------------------
# combine
# ---------------------------------------------------------------------------------------------


def const(value):
    """A reward returning ``value`` for every completion."""
    return lambda completions, **kw: [value] * len(completions)


def none_for_odd(completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def boom(completions, **kwargs):
    raise ZeroDivisionError("bad input")


@pytest.mark.parametrize(
    "funcs, expected_total",
    [
        ([("a", const(1.0), 1.0)], [1.0, 1.0]),
        ([("a", const(1.0), 0.5), ("b", const(2.0), 2.0)], [4.5, 4.5]),
        ([("a", const(1.0), -1.0)], [-1.0, -1.0]),  # negative weight: a penalty
        ([("a", none_for_odd, 2.0), ("b", const(1.0), 1.0)], [3.0, 1.0]),  # None adds 0
        ([("a", const(None), 1.0)], [0.0, 0.0]),
        ([("a", const(True), 1.0)], [1.0, 1.0]),  # bools count as numbers
        ([("a", const(float("nan")), 1.0)], [0.0, 0.0]),  # NaN (TRL's "None") adds 0
        ([], [0.0, 0.0]),
    ],
)
def test_combine_weighted_sum(funcs, expected_total):
    result = combine(funcs, ["x", "y"], {"answer": ["1", "2"]})
    assert result.total == pytest.approx(expected_total)


def test_combine_per_func_keeps_raw_values_and_none():
    result = combine(
        [("odd", none_for_odd, 2.0), ("nan", const(float("nan")), 1.0)], ["x", "y"], {}
    )
    assert result.per_func == {"odd": [1.0, None], "nan": [None, None]}
    assert result.errors == {"odd": 0, "nan": 0}


def test_combine_passes_columns_as_keyword_lists():
    seen = {}

    def spy(completions, answer, prompts, **kwargs):
        seen.update(answer=answer, prompts=prompts, extra=sorted(kwargs))
        return [0.0] * len(completions)

    columns = {"answer": ["1", "2"], "prompts": ["p", "p"], "id": [0, 1]}
    combine([("spy", spy, 1.0)], ["c1", "c2"], columns)
    assert seen == {"answer": ["1", "2"], "prompts": ["p", "p"], "extra": ["id"]}


def test_combine_on_error_raise_names_reward():
    with pytest.raises(RuntimeError, match="'boom'.*ZeroDivisionError.*bad input"):
        combine([("ok", const(1.0), 1.0), ("boom", boom, 1.0)], ["x"], {})


def test_combine_on_error_none_scores_none_and_counts():
    funcs = [("ok", const(1.0), 1.0), ("boom", boom, 5.0)]
    result = combine(funcs, ["x", "y"], {}, on_error="none")
    assert result.total == [1.0, 1.0]
    assert result.per_func["boom"] == [None, None]
    assert result.errors == {"ok": 0, "boom": 1}


@pytest.mark.parametrize("on_error", ["raise", "none"])
def test_combine_wrong_length_always_raises(on_error):
    short = lambda completions, **kw: [1.0]  # noqa: E731
    with pytest.raises(ValueError, match=r"'short' returned 1 values, expected 3"):
        combine([("short", short, 1.0)], ["a", "b", "c"], {}, on_error=on_error)


@pytest.mark.parametrize(
    "returned, match",
    [
        ("1.0", "returned str, expected a list"),
        (1.0, "returned float, expected a list"),
        (["1.0"], "returned str at index 0"),
        ([[1.0]], "returned list at index 0"),
    ],
)
def test_combine_bad_return_type(returned, match):
    with pytest.raises(TypeError, match=match):
        combine([("bad", lambda completions, **kw: returned, 1.0)], ["a"], {})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"columns": {"answer": ["1"]}}, "column 'answer' has 1 entries, expected 2"),
        ({"columns": {}, "on_error": "ignore"}, "on_error"),
        ({"columns": {}, "funcs": [("a", const(1.0), 1.0)] * 2}, "unique"),
    ],
)
def test_combine_argument_errors(kwargs, match):
    args = {"funcs": [("a", const(1.0), 1.0)], "completions": ["x", "y"], **kwargs}
    with pytest.raises(ValueError, match=match):
        combine(**args)


def test_reward_result_metrics():
    result = RewardResult(
        total=[1.0, 3.0], per_func={"acc": [1.0, None], "fmt": [None, None]}, errors={"fmt": 1}
    )
    m = result.metrics()
    assert m["reward"] == 2.0
    assert m["rewards/acc/mean"] == 1.0 and m["rewards/acc/std"] == 0.0
    assert math.isnan(m["rewards/fmt/mean"]) and m["rewards/fmt/errors"] == 1.0


def test_rewards_import_no_torch():
    code = "import sys, r1kit.rewards; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# loading user rewards as the README says (issue 13)
# ---------------------------------------------------------------------------------------------


def test_dotted_name_imports_from_the_working_directory(tmp_path, monkeypatch):
    """`rewards: [{name: myrewards.fn}]` from the directory holding myrewards.py, no PYTHONPATH."""
    (tmp_path / "cwd_rewards_mod.py").write_text("def fn(completions, **kwargs):\n    return [2.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert get_reward("cwd_rewards_mod.fn")(["a"]) == [2.0]
    assert sys.path[-1] == str(tmp_path)  # after the installed modules: a local file cannot shadow one


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"name": "accuracy", "checker": "numerc"}, ["'accuracy'", "checker='numerc'", "'numeric'", "'math'"]),
        ({"name": "accuracy", "extract": "tags"}, ["extract='tags'", "'tag'", "'auto_last_number'"]),
        ({"name": "format", "mode": "lenient"}, ["'format'", "mode='lenient'", "'strict'", "'soft'"]),
        ({"name": "tag_count", "style": "reason"}, ["style='reason'", "'reasoning'"]),
        ({"name": "length", "unit": "words"}, ["unit='words'", "'tokens'", "'chars'"]),
    ],
)
def test_bad_parameter_values_fail_at_load(entry, words):
    with pytest.raises(ValueError) as info:
        build_rewards([entry])
    for word in words:
        assert word in str(info.value)


def test_reward_without_kwargs_fails_at_load(tmp_path, monkeypatch):
    (tmp_path / "nokw_rewards_mod.py").write_text("def fn(completions, answer):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"reward 'nokw_rewards_mod.fn' \(nokw_rewards_mod.fn\) must accept \*\*kwargs"):
        build_rewards([{"name": "nokw_rewards_mod.fn"}])


def test_literal_aliases_match_the_tables():
    import typing

    from r1kit.data.answers import CHECKERS, EXTRACT_MODES, CheckerName, ExtractMode
    from r1kit.rewards.catalog import FORMAT_STYLES, FormatStyle

    assert typing.get_args(ExtractMode) == EXTRACT_MODES
    assert set(typing.get_args(CheckerName)) == set(CHECKERS)
    assert set(typing.get_args(FormatStyle)) == set(FORMAT_STYLES)


def test_bad_reward_fails_before_the_model_loads(tmp_path, capsys):
    from r1kit.cli import main

    assert main(["train", "rewards=[{name: accuracy, checker: numerc}]", f"output_dir={tmp_path}",
                 "model.name_or_path=./no-such-model"]) == 2  # the reward is checked first
    assert ("checker='numerc' is not a valid value; expected one of ['auto', 'math', 'numeric', 'multiple_choice', "
            "'text', 'ordered_list', 'unordered_set', 'boolean']"
            in capsys.readouterr().err)
    assert not (tmp_path / "tiny-grpo").exists()
