"""reasoning-gym tasks as a data source: ``data.source: reasoning_gym:<task>``, options in ``data.task_config``.

reasoning-gym (optional extra: ``pip install 'r1kit[reasoning-gym]'``) generates procedural problems
with checkable answers offline, e.g. ``reasoning_gym:chain_sum`` with ``task_config: {min_terms: 2,
max_terms: 4}``. Splits work like the built-in task: ``train`` draws from seed ``data.task.seed``, the
held-out split (``heldout`` or ``test``) from a different seed, and train skips every question that
appears among the first 1,000 held-out ones. Rows keep the task's ``metadata``, which the
``reasoning_gym`` reward hands back to the task's own scorer.
"""

from __future__ import annotations

import logging

from r1kit.data.errors import DataError

HELDOUT_SEED_OFFSET = 1_000_003
HELDOUT_GUARD = 1000  # held-out questions kept out of the train split


def _create(task: str, size: int, seed: int, task_config: dict):
    try:
        import reasoning_gym
    except ImportError:
        raise DataError(f"data.source 'reasoning_gym:{task}' needs the reasoning-gym package: "
                        "pip install 'r1kit[reasoning-gym]'") from None
    try:
        return reasoning_gym.create_dataset(task, size=size, seed=seed, **task_config)
    except ValueError as e:  # unknown task name
        raise DataError(f"data.source 'reasoning_gym:{task}': {e}") from None
    except TypeError as e:  # an option the task's config does not have
        raise DataError(f"data.task_config {task_config!r} for reasoning_gym:{task}: {e}") from None


def _row(entry: dict) -> dict:
    """A task entry as a row. A task with several valid answers (graph_color, boxnet, rush_hour, ...) has
    answer None: the row keeps None, never the string "None", which the policy could simply write."""
    answer = entry["answer"]
    return {"question": entry["question"], "answer": None if answer is None else str(answer),
            "metadata": entry["metadata"]}


def is_gym_row(row: dict) -> bool:
    """Whether a row came from a reasoning-gym task (its metadata names the task)."""
    meta = row.get("metadata")
    return isinstance(meta, dict) and "source_dataset" in meta


def gym_score(pred: str | None, row: dict) -> float:
    """The task's own ``score_answer`` of an extracted answer (0..1; no answer scores 0.0), given the row
    as the task generated it: question, answer (None when several are valid) and metadata."""
    import reasoning_gym  # the data source already required it

    if pred is None:
        return 0.0
    entry = {"question": row.get("question", ""), "answer": row.get("answer"), "metadata": row["metadata"]}
    return float(reasoning_gym.get_score_answer_fn(row["metadata"]["source_dataset"])(pred, entry))


def gym_rows(task: str, split: str, size: int, seed: int = 0, task_config: dict | None = None) -> list[dict]:
    """`size` rows of a reasoning-gym task's split (deterministic in all arguments)."""
    if split not in ("train", "heldout", "test"):
        raise DataError(f"reasoning_gym:{task} has splits train and heldout (or test), not {split!r}")
    config = dict(task_config or {})
    if split != "train":
        return [_row(e) for e in _create(task, size, seed + HELDOUT_SEED_OFFSET, config)]
    banned = {e["question"] for e in _create(task, HELDOUT_GUARD, seed + HELDOUT_SEED_OFFSET, config)}
    # a train draw of size + HELDOUT_GUARD leaves `size` rows unless held-out questions repeat in it
    entries = _create(task, size + HELDOUT_GUARD, seed, config)
    rows = [_row(e) for e in entries if e["question"] not in banned][:size]
    if not rows:
        raise DataError(f"reasoning_gym:{task}: every train question is also a held-out one; the task has too few "
                        "distinct problems for this data.task_config (widen it)")
    if len(rows) < size:  # a small task: train on what exists, and say which knob silences this
        logging.getLogger("r1kit.data").warning(
            "reasoning_gym:%s: only %d of data.train_size=%d train questions differ from the held-out ones; "
            "training on those %d (set data.train_size=%d, or widen data.task_config)", task, len(rows), size,
            len(rows), len(rows))
    return rows
