"""Data: the procedural task, dataset sources and their errors, prompt templates."""

import json

import pytest

from r1kit.config import DataCfg
from r1kit.data import tasks
from r1kit.data.answers import extract_tag
from r1kit.data.sources import DataError, load_data, load_rows
from r1kit.data.templates import SYSTEM_PROMPTS, build_messages, encode_prompt


def test_problem_arithmetic_and_working_agree():
    for row in tasks.arith_split("train", 300, seed=3):
        steps = row["working"].split(". ")
        assert steps[-1].rstrip(".").split("=")[1] == row["answer"]
        for step in steps:  # every equation is true and never negative
            lhs, rhs = step.rstrip(".").split("=")
            assert eval(lhs) == int(rhs) >= 0  # noqa: S307 (our own generated digits)


def test_splits_are_deterministic_and_disjoint():
    a = tasks.arith_split("train", 500, seed=0)
    assert a == tasks.arith_split("train", 500, seed=0)
    assert a != tasks.arith_split("train", 500, seed=1)
    heldout = tasks.arith_split("heldout", 200, seed=0)
    train_numbers = {r["working"] for r in tasks.arith_split("train", 5000, seed=0)}
    assert not train_numbers & {r["working"] for r in heldout}


def test_difficulty_is_configurable():
    row = tasks.arith_split("heldout", 1, num_operands=2, max_operand=9)[0]
    assert row["working"].count("=") == 1 and all(int(x.strip(",.")) <= 9 for x in row["question"].split() if x.strip(",.").isdigit())


def test_traces():
    row = {"answer": "7", "working": "3+4=7."}
    assert tasks.trace(row, "working") == "<think>3+4=7.</think><answer>7</answer>"
    assert tasks.trace(row, "direct", "reasoning") == "<reasoning></reasoning><answer>7</answer>"
    assert extract_tag(tasks.trace(row, "working")) == "7"
    with pytest.raises(ValueError, match="style"):
        tasks.trace(row, "chatty")


def test_local_files(tmp_path):
    rows = [{"problem": "1+1?", "solution": "2"}, {"problem": "2+2?", "solution": "4"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv = tmp_path / "d.csv"
    csv.write_text("problem,solution\n1+1?,2\n2+2?,4\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        cfg = DataCfg(source=str(tmp_path / name))
        cfg.columns.question, cfg.columns.answer = "problem", "solution"
        got = load_rows(cfg, "train")
        assert [(r["question"], r["answer"]) for r in got] == [("1+1?", "2"), ("2+2?", "4")]


def test_gold_from_a_worked_solution_is_its_last_boxed_answer(tmp_path):
    """data.gold_extract=boxed: MATH / NuminaMath / X-R1 keep only a worked solution; its last \\boxed{} is the gold."""
    rows = [{"problem": "Half of 1?", "solution": "First \\boxed{2} is wrong; halve: $\\boxed{\\frac{1}{2}}$."},
            {"problem": "3+4?", "solution": "3+4 = \\boxed{ 7 }"},
            {"problem": "No box?", "solution": "The answer is 5."}]
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = DataCfg(source=str(path), gold_extract="boxed")
    cfg.columns.question, cfg.columns.answer = "problem", "solution"
    with pytest.raises(DataError, match=r"math.jsonl row 2: no \\boxed\{\} answer in column 'solution' "
                                        r"\(data.gold_extract=boxed\); fix the data or set data.skip_invalid=true"):
        load_rows(cfg, "train")
    cfg.skip_invalid = True
    got, report = load_data(cfg, "train")
    assert [r["answer"] for r in got] == ["\\frac{1}{2}", "7"]
    assert got[1]["solution"] == rows[1]["solution"]  # the worked solution stays in its own column
    assert report.kept == 2 and report.skipped == {"no \\boxed{} answer": 1}
    cfg.gold_extract = "none"  # the default: the cell as it is
    assert load_rows(cfg, "train")[1]["answer"] == rows[1]["solution"]


def test_bad_data_errors_name_file_and_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl row 1: missing or empty answer \(column 'answer'\); fix the data "
                                        "or set data.skip_invalid=true"):
        load_rows(DataCfg(source=str(path)), "train")
    rows, report = load_data(DataCfg(source=str(path), skip_invalid=True), "train")
    assert [r["question"] for r in rows] == ["a"] and report.summary().endswith(
        "read 2 rows, kept 1, skipped 1 (1 missing or empty answer (first: row 1))")
    path.write_text('{"question": "a", "answer": "x\\n#### "}\n')
    with pytest.raises(DataError, match="row 0: missing or empty answer"):  # a GSM8K solution without its value
        load_rows(DataCfg(source=str(path)), "train")
    path.write_text('{"q": "a", "a": "1"}\n')
    with pytest.raises(DataError, match=r"unknown question column 'question'; columns present: \['a', 'q'\]; "
                                        "set data.columns.question"):
        load_rows(DataCfg(source=str(path)), "train")
    path.write_text('{"question": "a", "answer": "1"}\nnot json\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_rows(DataCfg(source=str(path)), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_rows(DataCfg(source=str(tmp_path / "missing.jsonl")), "train")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_rows(DataCfg(source=str(tmp_path / "empty.jsonl")), "train")
    with pytest.raises(DataError, match="not tiny_arith, a shipped benchmark"):
        load_rows(DataCfg(source="no_such_source"), "train")
    (tmp_path / "d.txt").write_text("question,answer\n")
    with pytest.raises(DataError, match=r"d.txt': expected a .jsonl, .parquet or .csv file, got '.txt'"):
        load_rows(DataCfg(source=str(tmp_path / "d.txt")), "train")
    (tmp_path / "d.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="d.parquet: not a readable parquet file"):
        load_rows(DataCfg(source=str(tmp_path / "d.parquet")), "train")
    (tmp_path / "header_only.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="header_only.csv is empty"):
        load_rows(DataCfg(source=str(tmp_path / "header_only.csv")), "train")


def test_json_array_files(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"question": "1+1?", "answer": 2}]))
    assert load_rows(DataCfg(source=str(path)), "train")[0]["answer"] == "2"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="row 0: expected a JSON object, got int"):
        load_rows(DataCfg(source=str(path)), "train")


def test_messages_and_templates(tiny_tokenizer):
    assert build_messages("q") == [{"role": "user", "content": "q"}]
    assert build_messages("q", "r1")[0] == {"role": "system", "content": SYSTEM_PROMPTS["r1"]}
    assert build_messages("q", "Be brief.")[0]["content"] == "Be brief."
    ids = encode_prompt(tiny_tokenizer, build_messages("2+2?"))
    assert tiny_tokenizer.decode(ids) == "<|user|>2+2?<|end|><|assistant|>"


def test_tokenizer_without_chat_template(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(tok, build_messages("q"))


def test_hub_dataset_names_go_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, subset=None, split=None):
        calls.append((name, subset, split))
        if name == "owner/offline":
            raise ConnectionError("no internet")
        return [{"question": "q", "answer": "Work: 2+2=4.\n#### 4"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows(DataCfg(source="openai/gsm8k", subset="main"), "test")
    assert calls == [("openai/gsm8k", "main", "test")] and rows[0]["answer"].endswith("#### 4")
    with pytest.raises(DataError, match="could not load hub dataset 'owner/offline'.*no internet"):
        load_rows(DataCfg(source="owner/offline"), "train")


@pytest.mark.parametrize("solution, style, expected", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72", "reasoning",
     "<reasoning>\nNatalia sold 48/2 = 24 clips.\nIn all 48+24 = 72.\n</reasoning>\n<answer>\n72\n</answer>"),
    ("It costs 1,000+80 = <<1000+80=1080>>1,080.\n#### 1,080", "think",
     "<think>\nIt costs 1,000+80 = 1,080.\n</think>\n<answer>\n1080\n</answer>"),
    ("#### 5", "reasoning", "<reasoning>\n\n</reasoning>\n<answer>\n5\n</answer>"),
])
def test_gsm8k_traces(solution, style, expected):
    from r1kit.data.traces import gsm8k_trace

    assert gsm8k_trace(solution, style) == expected


def test_gsm8k_traces_on_the_shipped_train_split():
    from r1kit.data.traces import gsm8k_sft_samples, gsm8k_trace

    rows = load_rows(DataCfg(source="gsm8k"), "train")
    samples = gsm8k_sft_samples(rows)
    assert len(samples) == 7473
    roles = [m["role"] for m in samples[0]["messages"]]
    assert roles == ["system", "user", "assistant"] and samples[0]["messages"][0]["content"] == SYSTEM_PROMPTS["tiny_r1"]
    targets = [s["messages"][-1]["content"] for s in samples]
    assert not any("<<" in t or "####" in t for t in targets)
    assert all(extract_tag(t) == r["answer"] for t, r in zip(targets, rows))  # the answer is the "#### N" value
    with pytest.raises(ValueError, match="row 1: GSM8K solution has no '#### N'"):
        gsm8k_sft_samples([rows[0], {"question": "q", "answer": "no final line"}])
    with pytest.raises(ValueError, match="tag_style"):
        gsm8k_trace("#### 1", "xml")


def _jsonl(path, answers):
    path.write_text("".join(json.dumps({"question": f"q{a}", "answer": str(a)}) + "\n" for a in answers))
    return str(path)


def test_local_file_evaluates_on_eval_source(tmp_path, caplog):
    """A file has no held-out split: evaluation reads data.eval_source, or warns that it uses training rows."""
    train = _jsonl(tmp_path / "train.jsonl", [1, 2, 3])
    held = _jsonl(tmp_path / "held.jsonl", [7, 8])
    cfg = DataCfg(source=train, eval_source=held)
    assert [r["answer"] for r in load_rows(cfg, cfg.split)] == ["1", "2", "3"]
    assert [r["answer"] for r in load_rows(cfg, cfg.eval_split)] == ["7", "8"]
    _, report = load_data(DataCfg(source=train, eval_source="gsm8k"), "auto", size=2)
    assert report.origin.startswith("gsm8k[test]")  # a benchmark as the held-out source: its test split
    assert not caplog.records
    with caplog.at_level("WARNING", logger="r1kit.data"):
        rows = load_rows(DataCfg(source=train), "auto")
    assert [r["answer"] for r in rows] == ["1", "2", "3"]
    assert "evaluating on the training rows of" in caplog.text and "data.eval_source" in caplog.text


def test_heldout_split_by_source():
    from r1kit.data.sources import eval_target, heldout_split

    assert [heldout_split(s) for s in ("tiny_arith", "gsm8k", "math500", "reasoning_gym:x", "a/b", "f.jsonl")] == \
        ["heldout", "test", "test", "heldout", "test", None]
    assert eval_target(DataCfg(source="math500", split="test")) == ("math500", "test", True)  # warned: same rows
    assert eval_target(DataCfg(source="tiny_arith")) == ("tiny_arith", "heldout", False)


def test_small_reasoning_gym_task_trains_on_what_exists(monkeypatch, caplog):
    """A task with few distinct problems: use them with a notice naming data.train_size, not a stop."""
    import sys
    import types

    def create_dataset(task, size, seed, **config):  # 10 problems in all; the held-out seed draws 8 of them
        distinct = 10 if seed == 1 else 8
        return [{"question": f"q{i % distinct}", "answer": "1", "metadata": {}} for i in range(size)]

    monkeypatch.setitem(sys.modules, "reasoning_gym", types.SimpleNamespace(create_dataset=create_dataset))
    from r1kit.data.gym import gym_rows

    with caplog.at_level("WARNING", logger="r1kit.data"):
        rows = gym_rows("tiny_task", "train", 2000, seed=1)
    assert {r["question"] for r in rows} == {"q8", "q9"} and len(rows) == 600
    assert "only 600 of data.train_size=2000" in caplog.text and "set data.train_size=600" in caplog.text


def test_small_reasoning_gym_task_with_the_default_size_names_no_knob(monkeypatch, caplog):
    """data.train_size left at its default is a cap: the notice says what the task has, not 'set data.train_size'."""
    import sys
    import types

    from r1kit.config import DataCfg
    from r1kit.data.sources import load_rows

    def create_dataset(task, size, seed, **config):
        distinct = 10 if seed == 1 else 8
        return [{"question": f"q{i % distinct}", "answer": "1", "metadata": {}} for i in range(size)]

    monkeypatch.setitem(sys.modules, "reasoning_gym", types.SimpleNamespace(create_dataset=create_dataset))
    data = DataCfg(source="reasoning_gym:tiny_task")
    data.task.seed = 1
    with caplog.at_level("WARNING", logger="r1kit.data"):
        rows = load_rows(data, "train")
    assert {r["question"] for r in rows} == {"q8", "q9"}
    assert "train_size" not in caplog.text and "the task has" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="r1kit.data"):
        load_rows(DataCfg(source="reasoning_gym:tiny_task", train_size=2000, task=data.task), "train")
    assert "set data.train_size=" in caplog.text  # the user's own setting is named
