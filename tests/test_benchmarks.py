"""The shipped benchmarks: they load offline, oracle answers score 100% and wrong ones 0% on the real data."""

import json
import re

import pytest

from r1kit.config import DataCfg
from r1kit.data import benchmarks
from r1kit.data.sources import DataError, load_data, load_rows
from r1kit.evaluate import evaluate
from r1kit.types import Completion

EXPECTED_ROWS = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math500", "test"): 500,
                 ("aime24", "test"): 30, ("aime25", "test"): 30, ("amc23", "test"): 40}


class OracleEngine:
    """A "model" that answers prompt i with texts[i], whatever the sampling."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def generate(self, prompts, n, sampling):
        assert len(prompts) == len(self.texts)
        return [Completion(i, [0] * 3, self.texts[i], "stop") for i in range(len(prompts)) for _ in range(n)]


def _eval(rows, texts, tokenizer, checker, n_samples=0):
    return evaluate(OracleEngine(texts), tokenizer, rows, checker=checker, n_samples=n_samples)


@pytest.mark.parametrize("name, split", list(EXPECTED_ROWS))
def test_shipped_benchmarks_load_offline_with_licenses(name, split):
    rows, report = load_data(DataCfg(source=name), split)
    assert len(rows) == report.read == report.kept == EXPECTED_ROWS[name, split] and not report.skipped
    folder = benchmarks.BENCHMARK_DIR / name
    assert (folder / "LICENSE").is_file() and "sha256" in (folder / "README.md").read_text()
    assert all(r["question"].strip() and r["answer"] for r in rows)
    assert benchmarks.BENCHMARK_DIR.is_relative_to(benchmarks.Path(benchmarks.__file__).parents[1])  # inside r1kit


def test_answers_are_normalised_per_benchmark():
    gsm = load_rows(DataCfg(source="gsm8k"), "test")
    assert gsm[0]["answer"] == "18" and gsm[0]["solution"].endswith("#### 18")
    assert all("," not in r["answer"] for r in gsm)  # "#### 1,080" -> "1080"
    aime24 = load_rows(DataCfg(source="aime24"), "test")
    assert "025" in [r["answer"] for r in aime24]  # kept as written; the numeric checker reads it as 25
    aime25 = load_rows(DataCfg(source="aime25"), "test")
    assert aime25[0]["answer"] == "70" and not any("Please reason step by step" in r["question"] for r in aime25)
    assert load_rows(DataCfg(source="amc23"), "test")[0]["answer"] == "27"  # float 27.0 in the file


def test_oracle_gsm8k_test_scores_100_and_wrong_answers_0(tiny_tokenizer):
    rows = load_rows(DataCfg(source="gsm8k"), "test")
    right = _eval(rows, [r["solution"] for r in rows], tiny_tokenizer, "numeric")
    assert right.greedy_accuracy == 1.0 and right.num_problems == 1319

    def off_by_one(solution: str) -> str:
        body, value = solution.rsplit("####", 1)
        return f"{body}#### {float(value.replace(',', '')) + 1:g}"

    wrong = _eval(rows, [off_by_one(r["solution"]) for r in rows], tiny_tokenizer, "numeric")
    assert wrong.greedy_accuracy == 0.0


def _perturb_latex(answer: str) -> str:
    """A different answer: the expression plus one (for an equation, its right-hand side plus one)."""
    if "=" in answer:
        lhs, rhs = answer.rsplit("=", 1)
        return f"{lhs}=\\left({rhs}\\right)+1"
    return f"\\left({answer}\\right)+1"


def _replace_last_box(solution: str, new: str) -> str:
    start = solution.rindex("\\boxed{")
    depth, i = 0, start + len("\\boxed")
    while True:
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth == 0:
            return solution[:start] + "\\boxed{" + new + "}" + solution[i + 1:]
        i += 1


def test_oracle_math500_scores_100_and_wrong_answers_0(tiny_tokenizer):
    rows = load_rows(DataCfg(source="math500"), "test")
    right = _eval(rows, [r["solution"] for r in rows], tiny_tokenizer, "math")
    assert right.greedy_accuracy == 1.0 and right.num_problems == 500
    wrong_texts = [_replace_last_box(r["solution"], _perturb_latex(r["answer"])) for r in rows]
    wrong = _eval(rows, wrong_texts, tiny_tokenizer, "math")
    assert wrong.greedy_accuracy == 0.0, [it["extracted"] for it in wrong.items if it["correct"]][:5]


@pytest.mark.parametrize("name", ["aime24", "aime25", "amc23"])
def test_oracle_numeric_benchmarks(name, tiny_tokenizer):
    rows = load_rows(DataCfg(source=name), "test")
    # the oracle writes the plain integer: "025" in AIME24 must match 25, AMC's 27.0 must match 27
    right = _eval(rows, [f"<think>...</think><answer>{int(float(r['answer']))}</answer>" for r in rows],
                  tiny_tokenizer, benchmarks.BENCHMARKS[name].checker, n_samples=2)
    assert right.greedy_accuracy == right.sampled_pass1 == right.pass_at[2] == right.maj_at[2] == 1.0
    wrong = _eval(rows, [f"<answer>{int(float(r['answer'])) + 1}</answer>" for r in rows], tiny_tokenizer, "numeric")
    assert wrong.greedy_accuracy == 0.0


# ------------------------------------------------------------------ data health and bad input


def test_unknown_benchmark_split_and_source_are_clear_errors():
    with pytest.raises(DataError, match="benchmark 'math500' has no split 'train'; it has: test"):
        load_rows(DataCfg(source="math500"), "train")
    with pytest.raises(DataError, match=r"not tiny_arith, a shipped benchmark \(gsm8k, math500"):
        load_rows(DataCfg(source="gsm9k"), "train")


def test_a_row_without_a_usable_answer_names_file_and_row(tmp_path, monkeypatch):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    lines = [{"question": "a?", "answer": "1+1=2\n#### 2"}, {"question": "b?", "answer": "no final line"},
             {"question": "", "answer": "#### 3"}, {"question": "d?", "answer": "#### 4"}]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    monkeypatch.setattr(benchmarks, "BENCHMARK_DIR", tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{folder / 'test.jsonl'} row 1: unusable answer")):
        load_rows(DataCfg(source="gsm8k"), "test")
    rows, report = load_data(DataCfg(source="gsm8k", skip_invalid=True), "test")
    assert [r["answer"] for r in rows] == ["2", "4"]
    assert (report.read, report.kept, dict(report.skipped)) == (4, 2, {"unusable answer": 1, "no question": 1})
    assert "read 4 rows, kept 2, skipped 2 (1 unusable answer (first: row 1); 1 no question (first: row 2))" \
        in report.summary()


def test_numeric_benchmark_answers_must_parse(tmp_path, monkeypatch):
    (tmp_path / "aime24").mkdir()
    (tmp_path / "aime24" / "test.jsonl").write_text('{"problem": "p", "answer": "twelve"}\n')
    monkeypatch.setattr(benchmarks, "BENCHMARK_DIR", tmp_path)
    with pytest.raises(DataError, match=r"row 0: unusable answer \(answer='twelve'\)"):
        load_rows(DataCfg(source="aime24"), "test")
    with pytest.raises(DataError, match="every row was skipped"):
        load_rows(DataCfg(source="aime24", skip_invalid=True), "test")


def test_the_checker_is_the_benchmarks_own_unless_eval_checker_is_set():
    from r1kit.data.benchmarks import checker_for

    assert checker_for("gsm8k", "auto") == "numeric" and checker_for("math500", "auto") == "math"
    assert checker_for("gsm8k", "math") == "math"  # an explicit eval.checker wins
    assert checker_for("tiny_arith", "auto") == "auto" and checker_for("data.jsonl", "numeric") == "numeric"
