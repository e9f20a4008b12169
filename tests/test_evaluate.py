"""Evaluation: pass@k and maj@k against hand-computed cases; `r1kit eval --benchmark` end to end."""

import json
import math

import pytest

from r1kit.cli import main
from r1kit.data.answers import check_answer
from r1kit.evaluate import default_ks, evaluate, maj_at_k, majority_vote, pass_at_k
from r1kit.evaluate.benchmarks import EVAL_BENCHMARKS
from r1kit.types import Completion


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 0, 1, 0.0),
    (5, 5, 3, 1.0),
    (4, 1, 1, 0.25),           # pass@1 = c / n
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 1, 4, 1.0),            # all four drawn: the correct one is among them
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (3, 2, 2, 1.0),            # only one wrong sample: any pair holds a correct one
    (16, 4, 1, 0.25),
])
def test_pass_at_k(n, c, k, expected):
    assert math.isclose(pass_at_k(n, c, k), expected)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("answers, correct, k, expected", [
    (["3", "5", "3", None], [1, 0, 1, 0], 4, True),       # "3" wins 2 to 1; None does not vote
    (["3", "5", "3", None], [1, 0, 1, 0], 2, True),       # 1-1 tie: the first answer seen wins
    (["5", "3", "3", "5", "5"], [0, 1, 1, 0, 0], 1, False),
    (["5", "3", "3", "5", "5"], [0, 1, 1, 0, 0], 3, True),   # "3" twice in the first three
    (["5", "3", "3", "5", "5"], [0, 1, 1, 0, 0], 5, False),  # "5" three times in five
    ([None, None], [0, 0], 2, False),                     # nobody answered
    (["7 ", " 7", "8"], [1, 1, 0], 3, True),              # whitespace does not split a vote
])
def test_maj_at_k(answers, correct, k, expected):
    assert maj_at_k(answers, [bool(c) for c in correct], k) is expected


def test_majority_vote_groups_equivalent_answers():
    same = lambda a, b: check_answer(a, b, "math")  # noqa: E731
    # "1/2", "0.5" and "\frac{1}{2}" are one answer (3 votes) and beat "2" (2 votes)
    assert majority_vote(["2", "1/2", "2", "0.5", r"\frac{1}{2}"], same) == 1
    assert majority_vote(["2", "1/2", "2", "0.5", r"\frac{1}{2}"]) == 0  # plain string votes: "2" wins


def test_maj_at_k_argument_errors():
    with pytest.raises(ValueError, match="2 answers but 1"):
        maj_at_k(["1", "2"], [True], 1)
    with pytest.raises(ValueError, match="1 <= k <= 2"):
        maj_at_k(["1", "2"], [True, False], 3)


def test_default_ks():
    assert default_ks(0) == [] and default_ks(1) == [1] and default_ks(4) == [1, 2, 4] and default_ks(6) == [1, 2, 4, 6]


class ScriptedEngine:
    """Answers greedy calls with `greedy[i]` and sampled calls with `samples[i][j]`."""

    def __init__(self, greedy, samples):
        self.greedy, self.samples = greedy, samples

    def generate(self, prompts, n, sampling):
        if sampling.temperature == 0:
            return [Completion(i, [0], t, "stop") for i, t in enumerate(self.greedy)]
        return [Completion(i, [0, 0], self.samples[i][j], "length" if j else "stop")
                for i in range(len(prompts)) for j in range(n)]


def test_evaluate_reports_pass_at_k_and_maj_at_k(tiny_tokenizer):
    rows = [{"question": "a", "answer": "4"}, {"question": "b", "answer": "#### 1,000"}]
    engine = ScriptedEngine(
        greedy=["<answer>4</answer>", "no answer"],
        samples=[["<answer>4</answer>", "<answer>5</answer>", "<answer>5</answer>", "<answer>4.0</answer>"],
                 [r"\boxed{1000}", "<answer>9</answer>", "<answer>9</answer>", "<answer>9</answer>"]])
    result = evaluate(engine, tiny_tokenizer, rows, n_samples=4, checker="numeric")
    assert result.greedy_accuracy == 0.5 and result.no_answer == 0.5
    assert result.sampled_pass1 == (2 / 4 + 1 / 4) / 2
    assert result.pass_at == {1: (0.5 + 0.25) / 2, 2: ((1 - 1 / 6) + 0.5) / 2, 4: 1.0}
    # maj@1: first samples 4 (right) and 1000 (right); maj@2: tie 4/5 -> 4, tie 1000/9 -> 1000;
    # maj@4: 4 and 4.0 tie 5 and 5 -> "4" seen first (right); 9 wins 3 to 1 (wrong)
    assert result.maj_at == {1: 1.0, 2: 1.0, 4: 0.5}
    item = result.items[1]
    assert item["extracted"] is None and item["sampled_answers"] == ["1000", "9", "9", "9"]
    assert item["sampled_correct"] == [1.0, 0.0, 0.0, 0.0] and item["maj@k"] == {1: True, 2: True, 4: False}
    summary = result.summary()
    assert summary["pass@4"] == 1.0 and summary["maj@4"] == 0.5 and summary["n_samples"] == 4
    with pytest.raises(ValueError, match=r"every k must be in \[1, n_samples=4\]"):
        evaluate(engine, tiny_tokenizer, rows, n_samples=4, ks=[8])


@pytest.mark.parametrize("bench_name", EVAL_BENCHMARKS)
def test_tiny_model_evaluates_every_benchmark(bench_name, tmp_path, capsys):
    out = tmp_path / "items.jsonl"
    assert main(["eval", "--benchmark", bench_name, "--limit", "3", "--n", "2", "--max-new-tokens", "12",
                 "--output", str(out), "--temperature", "0.6", "--top-p", "0.95", f"output_dir={tmp_path}"]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{\n"):])
    assert summary["benchmark"] == bench_name and summary["num_problems"] == 3 and "pass@2" in text
    for key in ("greedy_accuracy", "sampled_pass1", "pass@1", "pass@2", "maj@1", "maj@2"):
        assert 0 <= summary[key] <= 1
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(items) == 3 and json.loads(out.with_suffix(".summary.json").read_text()) == summary
    for item in items:  # the scores agree with the answers the tiny model gave
        assert item["correct"] == float(check_answer(item["extracted"], item["answer"], summary["checker"]))
        assert len(item["sampled_answers"]) == 2
    assert summary["greedy_accuracy"] == sum(i["correct"] for i in items) / 3


def test_eval_is_seeded(tmp_path, capsys):
    args = ["eval", "--benchmark", "tiny", "--limit", "4", "--n", "3", "--max-new-tokens", "16", "--seed", "3",
            f"output_dir={tmp_path}"]
    runs = []
    for name in ("a", "b"):
        assert main([*args, "--output", str(tmp_path / f"{name}.jsonl")]) == 0
        runs.append((tmp_path / f"{name}.jsonl").read_text())
    capsys.readouterr()
    assert runs[0] == runs[1]


def test_eval_bad_benchmark_and_k(tmp_path, capsys):
    assert main(["eval", "--benchmark", "gsm9k", f"output_dir={tmp_path}"]) == 2
    assert "unknown benchmark 'gsm9k'; expected one of tiny, gsm8k, math500, aime24, aime25, amc23" in capsys.readouterr().err
