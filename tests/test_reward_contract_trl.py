"""Reward functions written the ways TRL's documentation, TRL's reward tests and open-r1 write them run
unchanged through r1kit, which calls them as TRL's GRPOTrainer does: keyword arguments only
(prompts=, completions=, completion_ids=, every dataset column, trainer_state=, log_extra=, log_metric=),
and async ones awaited concurrently."""

import asyncio
import functools
import re

import pytest

from r1kit.config import DataCfg
from r1kit.rewards import RewardState, build_rewards, combine, contract, reward_inputs
from r1kit.types import Completion

ROWS = [{"question": "2+2?", "answer": "4", "solution": "4", "prompt_text": "<user>2+2?", "prompt_ids": [1, 2]},
        {"question": "3+3?", "answer": "6", "solution": "6", "prompt_text": "<user>3+3?", "prompt_ids": [1, 3]}]
COMPLETIONS = [Completion(0, [5, 6], "<think>x</think><answer>4</answer>", "stop"),
               Completion(0, [7], "<answer>5</answer>", "stop"),
               Completion(1, [8, 9, 10], "<think>yy</think><answer>6</answer>", "stop")]
STATE = RewardState(global_step=3, max_steps=12)


def content(completion):  # chat completions are [{"role": "assistant", "content": ...}] (TRL, open-r1)
    return completion[0]["content"] if isinstance(completion, list) else completion


def answer_of(completion):
    return re.search(r"<answer>(.*?)</answer>", content(completion)).group(1)


# --- the ways a reward is written (each is called exactly as TRL calls it) -------------------------------

def trl_doc_reward_len(completions, **kwargs):  # TRL docs' "reward_len": prefers 20 characters
    return [-abs(20 - len(content(c))) for c in completions]


def trl_doc_format(completions, **kwargs):  # TRL docs' format reward on conversational data
    return [1.0 if re.match(r"^<think>.*?</think><answer>.*?</answer>$", c[0]["content"]) else 0.0
            for c in completions]


def prompts_first(prompts, completions, **kwargs):  # TRL docs: "reward_func(prompts, completions, **kwargs)"
    return [float(len(p)) for p in prompts]


def column_first(solution, completions, **kwargs):  # a column before completions (fails if passed by position)
    return [float(answer_of(c) == s) for c, s in zip(completions, solution)]


def ground_truth_second(completions, answer, **kwargs):  # TRL docs: a dataset column as a named parameter
    return [float(answer_of(c) == a) for c, a in zip(completions, answer)]


def ids_named(completion_ids, **kwargs):  # only the token ids, by name (TRL's length penalties)
    return [float(len(ids)) for ids in completion_ids]


def ids_between(prompts, completions, completion_ids, trainer_state, **kwargs):  # every TRL argument named
    return [trainer_state.global_step + len(ids) / 10 for ids in completion_ids]


def keyword_only(*, completions, **kwargs):  # keyword-only parameters: no positional call can reach them
    return [1.0] * len(completions)


def kwargs_only(**kwargs):  # everything from **kwargs
    return [float(len(kwargs["completion_ids"][i])) for i in range(len(kwargs["completions"]))]


def multi_task(completions, solution, **kwargs):  # TRL docs: None where a reward does not apply
    return [None if s == "6" else 1.0 for s in solution]


def scheduled(completions, trainer_state, **kwargs):  # TRL docs: shaping by training progress, with logging
    kwargs["log_metric"]("progress", trainer_state.global_step / trainer_state.max_steps)
    kwargs["log_extra"]("note", ["n"] * len(completions))
    return [trainer_state.global_step / trainer_state.max_steps] * len(completions)


class CallableReward:  # a callable object (verifiers-style rubric)
    __name__ = "callable_reward"

    def __call__(self, completions, completion_ids, **kwargs):
        return [2.0 * len(ids) for ids in completion_ids]


async def async_len(completions, **kwargs):  # TRL's tests: async def reward functions
    await asyncio.sleep(0)
    return [float(len(content(c))) for c in completions]


async def async_ids_named(completion_ids, prompts, **kwargs):  # async, parameters in another order
    return [float(len(ids)) for ids in completion_ids]


class AsyncCallable:  # an object whose __call__ is async
    __name__ = "async_callable"

    async def __call__(self, completions, **kwargs):
        return [0.5] * len(completions)


CASES = [  # (reward, expected with chat prompts: one value per completion)
    (trl_doc_reward_len, [-14.0, -2.0, -15.0]),
    (trl_doc_format, [1.0, 0.0, 1.0]),
    (prompts_first, [1.0, 1.0, 1.0]),  # each prompt is its message list: [user] (system_prompt none)
    (column_first, [1.0, 0.0, 1.0]),
    (ground_truth_second, [1.0, 0.0, 1.0]),
    (ids_named, [2.0, 1.0, 3.0]),
    (ids_between, [3.2, 3.1, 3.3]),
    (keyword_only, [1.0, 1.0, 1.0]),
    (kwargs_only, [2.0, 1.0, 3.0]),
    (multi_task, [1.0, 1.0, None]),
    (scheduled, [0.25, 0.25, 0.25]),
    (CallableReward(), [4.0, 2.0, 6.0]),
    (functools.partial(column_first), [1.0, 0.0, 1.0]),  # a partial keeps the keyword call working
    (async_len, [34.0, 18.0, 35.0]),
    (async_ids_named, [2.0, 1.0, 3.0]),
    (AsyncCallable(), [0.5, 0.5, 0.5]),
]


@pytest.mark.parametrize("fn, expected", CASES, ids=[getattr(f, "__name__", "partial") for f, _ in CASES])
def test_trl_style_reward_runs_unchanged(fn, expected):
    texts, columns = reward_inputs(ROWS, COMPLETIONS, DataCfg(prompt_format="chat", system_prompt="none"))
    result = combine([("r", fn, 1.0)], texts, columns, state=STATE)
    assert result.per_func["r"] == pytest.approx(expected) and result.errors == {"r": 0}


def test_what_every_reward_is_given_is_what_trl_gives():
    """The keyword names TRL's _calculate_rewards passes, and nothing positional."""
    seen = []

    def spy(*args, **kwargs):
        seen.append((args, sorted(kwargs)))
        return [0.0] * len(kwargs["completions"])

    texts, columns = reward_inputs(ROWS, COMPLETIONS, DataCfg(prompt_format="plain"))
    combine([("spy", spy, 1.0)], texts, columns, state=STATE)
    assert seen == [((), ["answer", "completion_ids", "completions", "log_extra", "log_metric", "prompts",
                          "question", "solution", "trainer_state"])]


def test_async_rewards_run_concurrently(monkeypatch):
    """Two async rewards that each wait for the other finish only if they run at the same time (as TRL's
    asyncio.gather runs them); one after the other, the first would wait out the timeout."""
    monkeypatch.setattr(contract, "ASYNC_REWARD_TIMEOUT_S", 20.0)
    barrier = asyncio.Barrier(2)

    async def left(completions, **kwargs):
        await barrier.wait()
        return [1.0] * len(completions)

    async def right(completions, **kwargs):
        await barrier.wait()
        return [2.0] * len(completions)

    result = combine([("left", left, 1.0), ("sync", trl_doc_reward_len, 0.0), ("right", right, 1.0)],
                     ["a", "b"], {})
    assert result.per_func == {"left": [1.0, 1.0], "sync": [-19.0, -19.0], "right": [2.0, 2.0]}
    assert result.total == [3.0, 3.0]


def test_async_errors_and_timeouts_follow_on_error(monkeypatch):
    async def broken(completions, **kwargs):
        raise ZeroDivisionError("bad input")

    async def stuck(completions, **kwargs):
        await asyncio.Event().wait()  # never set

    with pytest.raises(RuntimeError, match="reward 'broken' raised ZeroDivisionError: bad input"):
        combine([("broken", broken, 1.0)], ["a"], {})
    result = combine([("broken", broken, 1.0), ("len", async_len, 1.0)], ["abc"], {}, on_error="none")
    assert result.per_func == {"broken": [None], "len": [3.0]} and result.errors == {"broken": 1, "len": 0}
    monkeypatch.setattr(contract, "ASYNC_REWARD_TIMEOUT_S", 0.2)
    with pytest.raises(RuntimeError, match=r"reward 'stuck' raised TimeoutError: async reward still running after"):
        combine([("stuck", stuck, 1.0)], ["a"], {})


def test_async_reward_by_dotted_path_with_parameters(tmp_path, monkeypatch):
    """An async reward named in a recipe, with a bound parameter: called by keyword, awaited."""
    (tmp_path / "async_rewards_mod.py").write_text(
        "async def scaled(completions, scale=1.0, **kwargs):\n    return [scale * len(c) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    funcs = build_rewards([{"name": "async_rewards_mod:scaled", "scale": 2.0}])
    assert combine(funcs, ["ab", "abc"], {}).per_func == {"scaled": [4.0, 6.0]}


def test_a_column_named_like_an_argument_is_refused():
    with pytest.raises(ValueError, match="column 'trainer_state' has the name of an argument every reward is given"):
        combine([("r", keyword_only, 1.0)], ["a"], {"trainer_state": [1]})
