"""reasoning-gym rows are graded by the task's own score_answer: in the default accuracy reward, the
reasoning_gym reward, held-out evaluation and generate, and never against the gold string "None"."""

import json

import pytest

from r1kit.config import DataCfg
from r1kit.data.grading import grade
from r1kit.data.sources import load_rows
from r1kit.rewards import accuracy_reward, get_reward

gym = pytest.importorskip("reasoning_gym", reason="reasoning-gym tasks need the extra: pip install -e '.[reasoning-gym]'")

SLOW = pytest.mark.slow  # these tasks' scorers load word lists: 15-40 s each on 2 busy cores
TASKS = ("word_sorting", "letter_jumble", "caesar_cipher", "number_sorting", "chain_sum", "family_relationships",
         "basic_arithmetic", "letter_counting", pytest.param("spell_backward", marks=SLOW),
         pytest.param("word_ladder", marks=SLOW))


def variants(answer: str) -> list[str]:
    """The gold, and the ways the old string/math-verify check went wrong: case, order, spacing, anagram."""
    items = [i.strip() for i in answer.split(",")]
    return [answer, answer.lower(), answer.upper(), answer.swapcase(), ", ".join(reversed(items)),
            ",".join(items), answer[::-1], answer + " extra", "None", ""]


@pytest.fixture(scope="module")
def rows():
    return {}


def task_rows(task, cache):
    if task not in cache:
        cache[task] = load_rows(DataCfg(source=f"reasoning_gym:{task}"), "heldout", size=4)
    return cache[task]


@pytest.mark.parametrize("task", TASKS)
def test_accuracy_is_the_tasks_own_score(task, rows):
    scorer = gym.get_score_answer_fn(task)
    completions, columns, expected = [], {"answer": [], "question": [], "metadata": []}, []
    for row in task_rows(task, rows):
        for text in variants(row["answer"]):
            completions.append(f"<think>…</think><answer>{text}</answer>")
            for key in columns:
                columns[key].append(row[key])
            expected.append(float(scorer(text, {**row, "answer": row["answer"]})))
    assert accuracy_reward(completions, **columns) == expected  # what the default reward gives
    assert get_reward("reasoning_gym")(completions, **columns) == expected
    assert 0.0 < sum(expected) < len(expected)  # the table holds right and wrong answers


def test_tasks_with_several_valid_answers_never_accept_the_string_none():
    rows = load_rows(DataCfg(source="reasoning_gym:graph_color"), "heldout", size=3)
    assert all(row["answer"] is None for row in rows)  # kept None, not "None"
    columns = {k: [r[k] for r in rows] for k in ("answer", "question", "metadata")}
    assert accuracy_reward(["<answer>None</answer>"] * 3, **columns) == [0.0] * 3
    # one valid colouring (the task keeps one in its metadata) scores full credit, by the task's own scorer
    valid = [json.dumps({str(v): int(c) for v, c in row["metadata"]["possible_answer"].items()}) for row in rows]
    assert accuracy_reward([f"<answer>{v}</answer>" for v in valid], **columns) == [1.0] * 3


def test_heldout_evaluation_uses_the_tasks_score(tiny_tokenizer):
    """A reordered word_sorting answer: the old symbolic check called it right, the task calls it wrong."""
    from r1kit.evaluate import evaluate
    from r1kit.types import Completion

    rows = load_rows(DataCfg(source="reasoning_gym:word_sorting"), "heldout", size=2)
    wrong_order = ", ".join(reversed(rows[1]["answer"].split(", ")))

    class Scripted:
        def generate(self, prompts, n, sampling):
            texts = [f"<answer>{rows[0]['answer']}</answer>", f"<answer>{wrong_order}</answer>"]
            return [Completion(i, [0], t, "stop") for i, t in enumerate(texts)]

    result = evaluate(Scripted(), tiny_tokenizer, rows, max_new_tokens=4)
    assert [item["correct"] for item in result.items] == [1.0, 0.0] and result.greedy_accuracy == 0.5


def test_a_prompt_longer_than_the_context_names_what_fixes_it():
    from r1kit.model_files import context_overflow

    class Model:
        class config:  # noqa: N801  (a model's config attribute)
            max_position_embeddings = 100

    message = context_overflow(Model(), 120, 64, "rollout.max_completion_length", "reasoning_gym:word_ladder")
    assert "alone fills the model's context" in message and "no rollout.max_completion_length can fit" in message
    assert "a data.task_config for reasoning_gym:word_ladder that makes smaller problems" in message
    assert "a model with a longer context" in message and "lower" not in message
    message = context_overflow(Model(), 60, 64, "rollout.max_completion_length", "reasoning_gym:word_ladder")
    assert "lower rollout.max_completion_length to at most 40" in message  # here the knob does help
