"""What a reward function is given during training: TRL's reward contract, built from r1kit's rows.

TRL's GRPOTrainer (``_calculate_rewards``) calls every reward function as::

    fn(prompts=..., completions=..., completion_ids=..., **dataset_columns,
       trainer_state=..., log_extra=..., log_metric=...)

with one entry per completion (B*G) in every list, and the shapes depending on the data:

  conversational prompts (r1kit: ``data.prompt_format: chat``)
      prompts      each the prompt's message list ``[{"role": "system", ...}, {"role": "user", ...}]``
      completions  each ``[{"role": "assistant", "content": TEXT}]`` (open-r1's rewards read
                   ``completion[0]["content"]``)
  plain prompts (``prompt_format: plain``)
      prompts      each the prompt text; completions each the completion text
  completion_ids   each the completion's token ids
  dataset columns  every column of the rows (question, answer, ... as loaded), except the prompt
                   itself; a column that some rows lack is None for those rows
  trainer_state    an object with TRL's ``global_step`` (optimizer steps done) and ``max_steps``
  log_extra, log_metric   TRL's callables; r1kit keeps what they receive on the RewardResult
                   (``extra_columns``, ``logged``; logged scalars are reported with the metrics)

``reward_inputs`` builds the first four from r1kit's rows; ``combine(..., state=...)`` adds the rest, and
``call_rewards`` calls each function as TRL does: keyword arguments only (so a function may name its
parameters in any order, take ``completion_ids`` by name, or take everything as ``**kwargs``). An
``async def`` reward (or any callable returning an awaitable) is awaited: TRL first runs the plain
functions in order, then every async one concurrently (``asyncio.gather``) on one event loop that lives in
a daemon thread for the whole run, so a client an async reward opens stays bound to a live loop. r1kit
does the same, and bounds the wait (ASYNC_REWARD_TIMEOUT_S).
No torch here: rows and completions are plain Python.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from r1kit.data.templates import build_messages

# Row keys that are r1kit's own (the tokenised prompt) or that TRL passes under another name.
_NOT_COLUMNS = ("prompt_ids", "prompt_text", "prompt", "prompts", "completion", "completions", "completion_ids")


@dataclass(frozen=True)
class RewardState:
    """The fields of transformers' TrainerState a reward reads for a schedule (as TRL's ``trainer_state``)."""

    global_step: int  # optimizer steps done before this batch was sampled
    max_steps: int  # train.max_steps


def reward_inputs(rows: Sequence[dict], completions: Sequence[Any], data_cfg) -> tuple[list, dict[str, list]]:
    """``(completions, columns)`` for ``combine``: what TRL passes for these rows (module docstring).

    rows: the B prompts' rows (with ``question`` and r1kit's ``prompt_text``); completions: (B*G,)
    objects with ``prompt_index``, ``text`` and ``token_ids`` (r1kit.types.Completion);
    data_cfg: the run's DataCfg (prompt_format, system_prompt, instruction).
    """
    conversational = data_cfg.prompt_format == "chat"
    if conversational:
        prompts = [build_messages(row["question"], data_cfg.system_prompt, data_cfg.instruction) for row in rows]
        texts: list = [[{"role": "assistant", "content": c.text}] for c in completions]
    else:
        prompts = [row["prompt_text"] for row in rows]
        texts = [c.text for c in completions]
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in _NOT_COLUMNS]
    columns = {k: [rows[c.prompt_index].get(k) for c in completions] for k in keys}
    columns["prompts"] = [prompts[c.prompt_index] for c in completions]
    columns["completion_ids"] = [list(c.token_ids) for c in completions]
    return texts, columns


ASYNC_REWARD_TIMEOUT_S = 600.0  # how long one batch's async rewards may run together before they count as failed


def call_rewards(funcs: Sequence[tuple[str, Callable[..., Any]]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """label -> what each ``fn(**kwargs)`` returned, or the exception it raised (the caller decides).

    Plain functions run in order; the awaitables returned by async ones then run concurrently on the
    shared event loop, and one still running after ASYNC_REWARD_TIMEOUT_S seconds gets a TimeoutError.
    """
    outputs: dict[str, Any] = {}
    pending: dict[str, Any] = {}
    for label, fn in funcs:
        try:
            out = fn(**kwargs)
        except Exception as e:  # reported per function: on_error decides whether it stops the run
            outputs[label] = e
            continue
        if inspect.isawaitable(out):
            pending[label] = out
        else:
            outputs[label] = out
    if pending:
        outputs.update(_await_all(pending))
    return {label: outputs[label] for label, _ in funcs}


def _await_all(pending: dict[str, Any]) -> dict[str, Any]:
    """Await every pending reward at once on the shared loop; label -> result or exception."""
    async def gather() -> list:
        return await asyncio.gather(*pending.values(), return_exceptions=True)

    future = asyncio.run_coroutine_threadsafe(gather(), _reward_loop())
    try:
        results = future.result(timeout=ASYNC_REWARD_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        future.cancel()
        late = TimeoutError(f"async reward still running after {ASYNC_REWARD_TIMEOUT_S:.0f} s "
                            "(r1kit.rewards.contract.ASYNC_REWARD_TIMEOUT_S)")
        return {label: late for label in pending}
    return dict(zip(pending, results))


_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None  # (pid that started it, loop): a fork needs its own
_LOOP_LOCK = threading.Lock()


def _reward_loop() -> asyncio.AbstractEventLoop:
    """The event loop async rewards run on: started once per process in a daemon thread (as TRL's)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="r1kit-async-rewards", daemon=True).start()
            _LOOP = (os.getpid(), loop)
        return _LOOP[1]
