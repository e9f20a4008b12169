"""Table tests for the shaping rewards (r1kit/rewards/shaping.py), adversarial completions included."""

import math
from pathlib import Path

import pytest

from r1kit.recipe import load_recipe
from r1kit.rewards import (
    build_rewards,
    combine,
    cosine_length_reward,
    get_reward,
    repetition_reward,
    soft_overlong_reward,
    tag_count_reward,
    think_tags_reward,
    unique_chars_reward,
)

GOOD = "<think>5+3=8</think>\n<answer>8</answer>"
LONG = "<think>" + "step " * 5000 + "</think><answer>8</answer>"  # very long


@pytest.mark.parametrize("completion, style, expected", [
    (GOOD, "think", 1.0),
    ("<think></think><answer>8</answer>", "think", 1.0),          # tags only is still the format
    ("<answer>8</answer><think>a</think>", "think", 1.0),         # wrong order: counts, not order
    ("<think>a</think><answer>1</answer><answer>2</answer>", "think", 0.5),  # several answers
    ("<think>a<think>b</think></think><answer>8</answer>", "think", 0.5),    # nested think
    ("<think>a</think>", "think", 0.5),
    ("", "think", 0.0),
    ("the answer is 8", "think", 0.0),
    (LONG, "think", 1.0),
    ("<think>日本語</think><answer>✓</answer>", "think", 1.0),     # unicode
    ("<reasoning>a</reasoning><answer>8</answer>", "reasoning", 1.0),
    ("<reasoning>a</reasoning><answer>8</answer>", "think", 0.5),  # the other tag style
])
def test_tag_count(completion, style, expected):
    assert tag_count_reward([completion], style=style) == [expected]


@pytest.mark.parametrize("completion, style, expected", [
    (GOOD, "think", 1.0),
    ("  <think>\nwork\n</think>", "think", 1.0),                  # leading whitespace, no answer yet
    ("<think></think><answer>8</answer>", "think", 0.0),          # empty reasoning earns nothing
    ("<think>   </think><answer>8</answer>", "think", 0.0),
    ("</think>a<think>", "think", 0.0),                          # wrong order
    ("<think>a<think>b</think>", "think", 0.0),                  # nested / repeated opening
    ("<think>the answer <answer>8</answer></think>", "think", 0.0),  # answer hidden in the reasoning
    ("x <think>a</think>", "think", 0.0),                        # reasoning must come first
    ("<think>unclosed", "think", 0.0),                           # truncated
    ("", "think", 0.0),
    (LONG, "think", 1.0),
    ("<think>日本語</think>", "think", 1.0),
    ("<reasoning>a</reasoning>", "reasoning", 1.0),
    ("<reasoning>a</reasoning>", "think", 0.0),
])
def test_think_tags(completion, style, expected):
    assert think_tags_reward([completion], style=style) == [expected]


@pytest.mark.parametrize("completion, expected", [
    ("abcd", 1.0),
    ("aaaa", 0.25),
    ("abab", 0.5),
    ("", 0.0),                 # empty
    ("日日本", 2 / 3),          # unicode counts characters, not bytes
    ("a" * 10000, 1e-4),       # very long and degenerate
])
def test_unique_chars(completion, expected):
    assert math.isclose(unique_chars_reward([completion])[0], expected)


@pytest.mark.parametrize("completion, ids, gold, expected", [
    (GOOD, 0, "8", 1.0),                 # correct, shortest: max_value_correct
    (GOOD, 1000, "8", 0.5),              # correct at max_len: min_value_correct
    (GOOD, 500, "8", 0.75),              # halfway: cos(pi/2) = 0 -> midpoint
    (GOOD, 5000, "8", 0.5),              # beyond max_len is clamped
    (GOOD, 0, "9", -1.0),                # wrong and short: min_value_wrong
    (GOOD, 1000, "9", -0.5),             # wrong and long: max_value_wrong
    ("<think>8</think>", 10, "8", -1.0 + 0.5 * (1 - (1 + math.cos(math.pi * 0.01)) / 2)),  # answer only in reasoning
    ("", 0, "8", -1.0),                  # empty
    (GOOD, 0, None, None),               # no gold: does not apply
])
def test_cosine_length(completion, ids, gold, expected):
    got = cosine_length_reward([completion], answer=[gold], completion_ids=[[0] * ids], extract="tag")[0]
    assert got == expected if expected is None else math.isclose(got, expected, abs_tol=1e-12)


def test_cosine_length_in_characters_and_missing_ids():
    assert cosine_length_reward(["<answer>8</answer>"], answer=["8"], unit="chars", max_len=18) == [0.5]
    with pytest.raises(ValueError, match="length counts tokens and needs the completion_ids column"):
        cosine_length_reward([GOOD], answer=["8"])


@pytest.mark.parametrize("completion, n, expected", [
    ("a b c d", 2, 0.0),                       # no repeated bigram
    ("a b a b a b", 2, -0.6),                  # 5 bigrams, 2 distinct: (1 - 2/5) * -1
    ("the cat the cat", 3, -0.0),              # 2 trigrams, both distinct
    ("go go go go go", 1, -0.8),               # unigrams: 1 distinct of 5
    ("Go GO go", 1, -2 / 3),                   # case-insensitive
    ("a b", 3, 0.0),                           # shorter than one n-gram
    ("", 3, 0.0),
    ("日 本 日 本", 2, -1 / 3),
    ("x " * 3000, 3, -(1 - 1 / 2998)),         # very long loop
])
def test_repetition(completion, n, expected):
    assert math.isclose(repetition_reward([completion], ngram_size=n)[0], expected, abs_tol=1e-12)


def test_repetition_bad_params():
    with pytest.raises(ValueError, match="max_penalty <= 0"):
        repetition_reward(["a"], max_penalty=0.5)


@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (48, 0.0),       # up to L_max - L_cache = 48: no punishment
    (52, -0.25), (56, -0.5),   # then linear: (48 - L) / 16
    (64, -1.0), (80, -1.0),    # at and beyond L_max
])
def test_soft_overlong(length, expected):
    got = soft_overlong_reward(["text"], completion_ids=[list(range(length))], max_completion_length=64,
                               overlong_buffer=16)
    assert got == [expected]


def test_soft_overlong_counts_tokens_not_characters():
    # a short string of many tokens is punished; a long string of few tokens is not
    rewards = soft_overlong_reward(["ab", "x" * 500], completion_ids=[[1] * 64, [1] * 10], max_completion_length=64)
    assert rewards == [-1.0, 0.0]


def test_soft_overlong_requires_completion_ids():
    with pytest.raises(ValueError, match="soft_overlong counts tokens and needs the completion_ids column"):
        soft_overlong_reward(["text"])
    with pytest.raises(ValueError, match="2 completion_ids for 1 completions"):
        soft_overlong_reward(["text"], completion_ids=[[1], [2]])
    with pytest.raises(ValueError, match="overlong_buffer"):
        soft_overlong_reward(["text"], completion_ids=[[1]], overlong_buffer=0)


def test_soft_overlong_error_is_counted_or_raised_by_recipe_choice():
    funcs = build_rewards([{"name": "soft_overlong"}, {"name": "unique_chars"}])
    with pytest.raises(RuntimeError, match="reward 'soft_overlong' raised ValueError"):
        combine(funcs, ["ab"], {}, on_error="raise")
    result = combine(funcs, ["ab"], {}, on_error="none")
    assert result.per_func["soft_overlong"] == [None] and result.errors == {"soft_overlong": 1, "unique_chars": 0}
    assert result.total == [1.0]


def test_think_unique_recipe_reproduces_the_seed_tutorial_mix():
    cfg = load_recipe(Path(__file__).parent.parent / "recipes" / "tiny" / "think-unique.yaml")
    funcs = build_rewards([{"name": r.name, "weight": r.weight, **r.params} for r in cfg.rewards])
    completions = ["<think>abcd</think><answer>1</answer>", "<think></think>aaaa", ""]
    total = combine(funcs, completions, {"answer": ["1"] * 3}).total
    expected = [0.7 * think + 0.3 * uniq for think, uniq in
                zip(think_tags_reward(completions), unique_chars_reward(completions))]
    assert total == pytest.approx(expected) and total[0] == pytest.approx(0.7 + 0.3 * len(set(completions[0])) / 37)


def test_all_shaping_rewards_are_registered():
    for name in ("tag_count", "think_tags", "unique_chars", "length", "repetition", "soft_overlong"):
        assert callable(get_reward(name))
