"""TRL's reward contract (r1kit.rewards.contract): open-r1-style rewards run unchanged on what r1kit passes."""

import math
import re

import numpy as np
import pytest
import torch

from r1kit.config import DataCfg
from r1kit.rewards import RewardState, combine, reward_inputs
from r1kit.types import Completion

ROWS = [{"question": "2+2?", "answer": "4", "prompt_text": "<user>2+2?", "prompt_ids": [1, 2], "level": 1},
        {"question": "3+3?", "answer": "6", "prompt_text": "<user>3+3?", "prompt_ids": [1, 3]}]  # no "level"
COMPLETIONS = [Completion(0, [5, 6], "<think>x</think><answer>4</answer>", "stop"),
               Completion(0, [7], "<answer>5</answer>", "stop"),
               Completion(1, [8, 9, 10], "<think>y</think><answer>6</answer>", "length")]


# open-r1's rewards, written as open-r1 writes them: they index completion[0]["content"].
def openr1_accuracy(completions, solution=None, answer=None, **kwargs):
    contents = [completion[0]["content"] for completion in completions]
    return [float(re.search(r"<answer>(.*?)</answer>", c).group(1) == a) for c, a in zip(contents, answer)]


def openr1_format(completions, **kwargs):
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    return [1.0 if re.match(pattern, completion[0]["content"], re.DOTALL) else 0.0 for completion in completions]


def step_scheduled(completions, trainer_state, **kwargs):
    """A reward that reads TRL's trainer_state for a schedule and logs a metric and a column, as TRL allows."""
    kwargs["log_metric"]("my_metric", 0.5)
    kwargs["log_extra"]("why", ["a"] * len(completions))
    return [trainer_state.global_step / trainer_state.max_steps] * len(completions)


def spy(seen):
    def reward(completions, prompts, completion_ids, **kwargs):
        seen.update(completions=completions, prompts=prompts, completion_ids=completion_ids, **kwargs)
        return [0.0] * len(completions)
    return reward


def test_conversational_inputs_are_message_lists():
    seen = {}
    texts, columns = reward_inputs(ROWS, COMPLETIONS, DataCfg(prompt_format="chat", system_prompt="r1"))
    combine([("spy", spy(seen), 1.0)], texts, columns, state=RewardState(3, 10))
    assert seen["completions"][1] == [{"role": "assistant", "content": "<answer>5</answer>"}]
    assert [m["role"] for m in seen["prompts"][2]] == ["system", "user"]  # the prompt's messages
    assert seen["prompts"][2][-1]["content"] == "3+3?"
    assert seen["completion_ids"] == [[5, 6], [7], [8, 9, 10]]
    assert seen["answer"] == ["4", "4", "6"] and seen["question"][2] == "3+3?"
    assert seen["level"] == [1, 1, None]  # a column some rows lack: None there, not a KeyError
    assert "prompt_ids" not in seen and "prompt_text" not in seen  # r1kit's own keys stay out
    assert seen["trainer_state"].global_step == 3 and callable(seen["log_metric"])


def test_plain_inputs_are_strings():
    seen = {}
    texts, columns = reward_inputs(ROWS, COMPLETIONS, DataCfg(prompt_format="plain"))
    combine([("spy", spy(seen), 1.0)], texts, columns)
    assert seen["completions"][0] == COMPLETIONS[0].text and seen["prompts"][2] == "<user>3+3?"
    assert "trainer_state" not in seen  # only the trainer (state=...) adds TRL's extras


def test_openr1_rewards_run_unchanged():
    texts, columns = reward_inputs(ROWS, COMPLETIONS, DataCfg(prompt_format="chat"))
    funcs = [("accuracy", openr1_accuracy, 1.0), ("format", openr1_format, 0.5), ("sched", step_scheduled, 1.0)]
    result = combine(funcs, texts, columns, state=RewardState(5, 10))
    assert result.per_func["accuracy"] == [1.0, 0.0, 1.0]
    assert result.per_func["format"] == [1.0, 0.0, 1.0]
    assert result.total == [2.0, 0.5, 2.0]
    assert result.metrics()["my_metric"] == 0.5 and result.extra_columns == {"why": ["a", "a", "a"]}
    assert result.select([2]).extra_columns == {"why": ["a"]}


@pytest.mark.parametrize(
    "returned, expected",
    [
        (np.array([1.0, 0.5]), [1.0, 0.5]),  # a numpy array
        (torch.tensor([1.0, 0.0]), [1.0, 0.0]),  # a torch tensor
        ([np.float32(0.25), torch.tensor(2.0)], [0.25, 2.0]),  # numpy and torch scalars in a list
        (np.array([1.0, np.nan]), [1.0, None]),  # NaN is TRL's "does not apply"
        ((1, True), [1.0, 1.0]),  # a tuple of ints and bools
    ],
)
def test_array_and_tensor_returns(returned, expected):
    result = combine([("r", lambda completions, **kw: returned, 1.0)], ["a", "b"], {})
    assert result.per_func["r"] == expected


@pytest.mark.parametrize("on_error", ["raise", "none"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, np.float64("inf")])
def test_infinite_reward_is_an_error_naming_the_reward(bad, on_error):
    with pytest.raises(ValueError, match=r"reward 'blows_up' returned -?inf at index 1; rewards must be finite"):
        combine([("blows_up", lambda completions, **kw: [0.0, bad], 1.0)], ["a", "b"], {}, on_error=on_error)


def test_rewards_package_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, r1kit.rewards; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.stdout.split()[0] == "False"
