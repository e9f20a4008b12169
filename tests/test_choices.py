"""Multiple choice: the option letter a completion names, the checker, GPQA/generic rows and their seeded
shuffle, and `r1kit eval --benchmark gpqa_diamond | FILE` end to end with the tiny model."""

import json
import re
from collections import Counter

import pytest

from r1kit.cli import main
from r1kit.data.answers import check_answer, choice_letter, extract_answer, extract_choice
from r1kit.data.choices import (GPQA_INCORRECT, LETTERS, choice_rows, format_question, gpqa_choices,
                                shuffle_choices)
from r1kit.data.sources import DataError
from r1kit.evaluate import evaluate
from r1kit.types import Completion


@pytest.mark.parametrize("text, expected", [
    ("<answer>B</answer>", "B"),
    ("<answer> (c) </answer>", "C"),                           # any case inside brackets
    ("<answer>D) 42 apples</answer>", "D"),                    # the letter with the option's text
    ("<think>A looks wrong</think><answer>\\boxed{B}</answer>", "B"),  # a box inside the tag
    ("so the answer is $\\boxed{\\text{C}}$", "C"),
    ("\\boxed{(A)}", "A"),
    ("The answer is (B).", "B"),
    ("The correct answer is (b)", "B"),
    ("Answer: D", "D"),
    ("**Answer:** C", "C"),
    ("final answer is: A", "A"),
    ("Answer: A\nWait, no. Answer: C", "C"),                   # the last statement wins
    ("B", "B"),                                                # a letter alone
    ("(d)", "D"),
    ("C.", "C"),
    ("Answer: Because the field is uniform", None),            # a word, not an option
    ("the answer is a vector", None),                          # lowercase letter outside brackets
    ("A bird in the hand", None),
    ("<answer>42</answer>", None),                             # a number names no option
    ("<answer>B</answer><answer>C", None),                     # the final answer was cut off
    ("I think it is B or C", None),                            # no committed answer
    ("", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected
    assert extract_answer(text, "choice") == expected


@pytest.mark.parametrize("pred, gold, expected", [
    ("B", "B", True),
    ("b", "B", True),
    ("(B)", "B", True),
    ("B) 42", "B", True),                  # the auto extractor's tag content, letter and text
    ("The answer is (B)", "B", True),      # a sentence from the tag
    ("C", "B", False),
    ("42", "B", False),                    # the option's text without its letter
    ("", "B", False),
    ("AB", "A", False),                    # two letters name no single option
])
def test_multiple_choice_checker(pred, gold, expected):
    assert check_answer(pred, gold, "multiple_choice") is expected


def test_choice_letter_of_latex_and_markdown():
    letters = [choice_letter(t) for t in ("$\\textbf{D}$", "**B**", "\\mathrm{A}", None, "E.")]
    assert letters == ["D", "B", "A", None, "E"]


def test_shuffle_is_seeded_per_row_and_tracks_the_correct_choice():
    choices = ["right", "w1", "w2", "w3"]
    shuffled, correct = shuffle_choices(choices, 0, seed=0, key="q1")
    assert shuffled[correct] == "right" and sorted(shuffled) == sorted(choices)
    assert shuffle_choices(choices, 0, 0, "q1") == (shuffled, correct)  # same row, same order: on any run
    orders = {tuple(shuffle_choices(choices, 0, seed, "q1")[0]) for seed in range(20)}
    assert len(orders) > 5  # the seed changes the order
    positions = Counter(shuffle_choices(choices, 0, 0, f"question {i}")[1] for i in range(400))
    assert set(positions) == {0, 1, 2, 3} and max(positions.values()) < 140  # about 100 each, never "always A"


def test_format_question():
    assert format_question(" Which is heavier? ", ["1 kg of iron", "2 kg of feathers", "neither"]) == (
        "Which is heavier?\n\nA) 1 kg of iron\nB) 2 kg of feathers\nC) neither\n\n"
        "Answer with the letter of the correct option (A, B or C).")


def gpqa_row(i: int) -> dict:
    return {"Question": f"Question {i}: which particle?", "Correct Answer": f"right {i}",
            **{column: f"wrong {j} of {i}" for j, column in enumerate(GPQA_INCORRECT, 1)}, "Subdomain": "physics"}


def test_gpqa_rows_are_lettered_and_shuffled():
    raw = [gpqa_row(i) for i in range(12)]
    rows, report = choice_rows(raw, "gpqa.jsonl")
    assert report.summary() == "gpqa.jsonl: read 12 rows, kept 12, skipped 0"
    for i, row in enumerate(rows):
        letter = row["answer"]
        assert row["choices"][LETTERS.index(letter)] == f"right {i}"
        assert f"\n{letter}) right {i}\n" in row["question"] + "\n" and row["question"].startswith(f"Question {i}:")
    assert {row["answer"] for row in rows} != {"A"}  # GPQA lists the right answer first; shuffled, it moves
    assert choice_rows(raw, "gpqa.jsonl")[0] == rows and choice_rows(raw, "gpqa.jsonl", seed=1)[0] != rows
    assert gpqa_choices(raw[0]) == ("Question 0: which particle?", ["right 0", "wrong 1 of 0", "wrong 2 of 0",
                                                                    "wrong 3 of 0"], 0)


def test_generic_rows_keep_their_order_unless_asked():
    raw = [{"question": "2+2?", "choices": ["3", "4", "5"], "answer": "B"},
           {"question": "3+3?", "choices": ["6", "7"], "answer": 0},       # MMLU's 0-based index
           {"question": "1+1?", "choices": ["1", "2", "3", "4"], "answer": "(d)"}]
    rows, _ = choice_rows(raw, "mc.jsonl")
    assert [(r["choices"], r["answer"]) for r in rows] == [(["3", "4", "5"], "B"), (["6", "7"], "A"),
                                                           (["1", "2", "3", "4"], "D")]
    assert rows[1]["question"] == "3+3?\n\nA) 6\nB) 7\n\nAnswer with the letter of the correct option (A or B)."
    shuffled, _ = choice_rows(raw, "mc.jsonl", shuffle=True)
    assert [r["choices"][LETTERS.index(r["answer"])] for r in shuffled] == ["4", "6", "4"]


@pytest.mark.parametrize("row, message", [
    ({**gpqa_row(1), "Incorrect Answer 2": " "}, "x.jsonl row 1: missing or empty 'Incorrect Answer 2'"),
    ({"question": "q", "choices": ["only one"], "answer": "A"}, "x.jsonl row 1: 'choices' must be a list of 2 to 26"),
    ({"question": "q", "choices": "A or B", "answer": "A"}, "x.jsonl row 1: 'choices' must be a list"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "x.jsonl row 1: 'answer' must be a letter A-B or an "
                                                              "index 0-1 of the 2 choices, got 'C'"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "x.jsonl row 1: 'answer' must be a letter A-B or an "
                                                            "index 0-1 of the 2 choices, got 2"),
    ({"question": "q", "choices": ["a", ""], "answer": "A"}, "x.jsonl row 1: 'choices' holds an empty option"),
])
def test_bad_rows_name_the_row(row, message):
    good = gpqa_row(0) if "Question" in row else {"question": "ok", "choices": ["a", "b"], "answer": "A"}
    with pytest.raises(DataError, match="^" + re.escape(message)):
        choice_rows([good, row], "x.jsonl")
    rows, report = choice_rows([good, row], "x.jsonl", skip_invalid=True)
    assert len(rows) == 1 and report.kept == 1 and sum(report.skipped.values()) == 1


def test_not_multiple_choice_data_is_a_clear_error():
    with pytest.raises(DataError, match="x.jsonl: not multiple-choice data; expected the columns 'Question'"):
        choice_rows([{"question": "q", "answer": "1"}], "x.jsonl")


class LetterEngine:
    """Greedy completions scripted per prompt."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, n, sampling):
        return [Completion(i, [0], self.texts[i], "stop") for i in range(len(prompts))]


def test_evaluate_scores_letters(tiny_tokenizer):
    rows, _ = choice_rows([gpqa_row(i) for i in range(4)], "gpqa.jsonl")
    wrong = next(letter for letter in "ABCD" if letter != rows[2]["answer"])
    texts = [f"<answer>{rows[0]['answer']}</answer>", f"The answer is ({rows[1]['answer'].lower()}).",
             f"Answer: {wrong}", "no idea"]
    result = evaluate(LetterEngine(texts), tiny_tokenizer, rows, extract="choice", checker="multiple_choice")
    assert [item["correct"] for item in result.items] == [1.0, 1.0, 0.0, 0.0]
    assert result.greedy_accuracy == 0.5 and result.no_answer == 0.25


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def run_eval(args, capsys):
    assert main(["eval", *args, "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):])


@pytest.mark.parametrize("layout", ["gpqa", "generic"])
def test_eval_a_local_multiple_choice_file(layout, tmp_path, capsys):
    raw = [gpqa_row(i) for i in range(5)] if layout == "gpqa" else [
        {"question": f"{i}+1?", "choices": [str(i), str(i + 1), str(i + 2)], "answer": "B"} for i in range(5)]
    data, items = write_jsonl(tmp_path / f"{layout}.jsonl", raw), tmp_path / "items.jsonl"
    summary = run_eval(["--benchmark", data, "--limit", "4", "--output", str(items), f"output_dir={tmp_path}"], capsys)
    assert summary["benchmark"] == layout and summary["checker"] == "multiple_choice"
    assert summary["data"] == f"{data}: read 5 rows, kept 5, skipped 0" and summary["num_problems"] == 4
    expected, _ = choice_rows(raw, data)
    for item, row in zip((json.loads(line) for line in items.read_text().splitlines()), expected):
        assert (item["question"], item["answer"]) == (row["question"], row["answer"])
        assert item["extracted"] == extract_choice(item["completion"])  # the choice extractor, not the math one
        assert item["correct"] == float(check_answer(item["extracted"], item["answer"], "multiple_choice"))


def test_eval_gpqa_diamond_from_the_hub(monkeypatch, tmp_path, capsys):
    import datasets

    calls = []

    def load_dataset(name, subset, split):  # the hub boundary: GPQA is gated and this machine is offline
        calls.append((name, subset, split))
        return [gpqa_row(i) for i in range(3)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    summary = run_eval(["--benchmark", "gpqa_diamond", f"output_dir={tmp_path}"], capsys)
    assert calls == [("Idavidrein/gpqa", "gpqa_diamond", "train")]
    assert summary["benchmark"] == "gpqa_diamond" and summary["checker"] == "multiple_choice"
    assert summary["data"] == "Idavidrein/gpqa[gpqa_diamond/train]: read 3 rows, kept 3, skipped 0"
    assert (tmp_path / "eval" / "builtin-tiny-sft-gpqa_diamond.jsonl").is_file()

    def unreachable(name, subset, split):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    assert main(["eval", "--benchmark", "gpqa_diamond", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "could not load hub dataset 'Idavidrein/gpqa' (subset 'gpqa_diamond') split 'train': offline" in err
    assert "GPQA is gated" in err and "--benchmark FILE" in err


def test_eval_a_plain_file_with_the_multiple_choice_checker(tmp_path, capsys):
    raw = [{"question": "2+2?\nA) 3\nB) 4", "answer": "B"}, {"question": "1+1?\nA) 2\nB) 3", "answer": "A"}]
    data = write_jsonl(tmp_path / "letters.jsonl", raw)
    summary = run_eval(["--benchmark", data, f"output_dir={tmp_path}"], capsys)
    assert summary["checker"] == "auto" and summary["benchmark"] == "letters"  # question/answer rows, as data.source
    summary = run_eval(["--benchmark", data, "--checker", "multiple_choice", f"output_dir={tmp_path}"], capsys)
    assert summary["checker"] == "multiple_choice" and summary["num_problems"] == 2
