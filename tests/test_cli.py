"""The command line: the default (no recipe) path on a very short run, eval, errors, usage."""

import json

from r1kit.cli import main


def test_train_with_the_builtin_default(tmp_path, capsys):
    # No recipe: the config defaults are the tiny world (builtin:tiny-sft, tiny_arith, accuracy reward).
    code = main(["train", f"output_dir={tmp_path}", "train.max_steps=1", "train.batch_size=32",
                 "train.micro_batch_size=32", "data.eval_size=8", "log.progress=false"])
    assert code == 0
    summary = json.loads((tmp_path / "tiny-grpo" / "summary.json").read_text())
    assert summary["steps"] == 1 and 0 <= summary["accuracy_before"] <= 1 and 0 <= summary["accuracy_after"] <= 1
    out = capsys.readouterr().out
    assert "held-out greedy accuracy" in out and "run directory" in out


def test_eval_command(small_model_dir, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    assert main(["eval", small_model_dir, "--n", "2", "--output", str(items), "data.eval_size=3",
                 "eval.max_new_tokens=8"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])
    assert report["num_problems"] == 3 and 0 <= report["greedy_accuracy"] <= 1 and "sampled_pass1" in report
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    assert len(lines) == 3 and len(lines[0]["sampled_correct"]) == 2
    assert lines[0]["question"] in lines[0]["prompt"] and lines[0]["prompt"] != lines[0]["question"]  # as templated
    page = tmp_path / "items.report.html"  # the eval's page beside its jsonl (tests/test_report.py)
    assert f"report: {page}" in out and "pass@2" in page.read_text()


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "train.batch_size=100"]) == 2
    assert "train.batch_size (100) must be divisible by rollout.num_generations (16)" in capsys.readouterr().err
    assert main(["train", "model.name_or_path=./missing-model", f"output_dir={tmp_path}"]) == 2
    assert "'./missing-model' does not exist" in capsys.readouterr().err
    assert main(["train", "data.source=missing.jsonl", f"output_dir={tmp_path}", "name=x"]) == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    assert main(["train", "rewards=[{name: acuracy}]", f"output_dir={tmp_path}", "name=y"]) == 2
    assert "unknown reward 'acuracy'; available: accuracy, format, length, " in capsys.readouterr().err
    assert main(["train", "rewards=[{name: format, mdoe: strict}]", f"output_dir={tmp_path}", "name=z"]) == 2
    assert "reward 'format' has no parameter 'mdoe'" in capsys.readouterr().err
    assert main(["bogus"]) == 2 and "usage" in capsys.readouterr().out


def test_eval_seeds_sampling_with_the_recipe_seed(small_model_dir, monkeypatch, capsys):
    import r1kit.evaluate

    seen = {}
    real = r1kit.evaluate.evaluate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(r1kit.evaluate, "evaluate", spy)
    assert main(["eval", small_model_dir, "--n", "1", "seed=7", "data.eval_size=2", "eval.max_new_tokens=4"]) == 0
    assert seen["seed"] == 7 and seen["n_samples"] == 1


def test_data_command_reports_health_and_writes_traces(tmp_path, capsys):
    traces = tmp_path / "sft.jsonl"
    assert main(["data", "gsm8k", "--split", "test", "--traces", str(traces)]) == 0
    out = capsys.readouterr().out
    assert "gsm8k[test]" in out and "read 1319 rows, kept 1319, skipped 0" in out
    first = json.loads(traces.read_text().splitlines()[0])
    assert first["messages"][-1]["content"].endswith("<answer>\n18\n</answer>")
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+2?", "a": ""}\n')
    assert main(["data", str(bad)]) == 2
    assert "unknown question column 'question'; columns present: ['a', 'q']" in capsys.readouterr().err
    assert main(["data", str(bad), "--question", "q", "--answer", "a"]) == 2
    assert "d.jsonl row 1: missing or empty answer (column 'a')" in capsys.readouterr().err
    assert main(["data", str(bad), "--question", "q", "--answer", "a", "--skip-invalid"]) == 0
    assert "read 2 rows, kept 1, skipped 1 (1 missing or empty answer (first: row 1))" in capsys.readouterr().out
    assert main(["data", "math500", "--traces", str(traces)]) == 2
    assert "--traces: GSM8K row 0: GSM8K solution has no '#### N'" in capsys.readouterr().err


def test_a_command_leaves_its_process_group_before_exit(tmp_path, monkeypatch):
    # after a command every rank finished, r1kit tears the process group down (r1kit.distributed.
    # leave_process_group), as torch asks before exit; a failed command leaves it to the exit
    import accelerate  # noqa: F401  process groups come through Accelerate
    import torch.distributed as td

    from r1kit import cli

    def joins_a_group(args):
        td.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        if args:
            raise FileNotFoundError(args[0])

    monkeypatch.setitem(cli.COMMANDS, "train", joins_a_group)
    assert cli.main(["train"]) == 0
    assert not td.is_initialized()
    assert cli.main(["train", "missing.yaml"]) == 2
    assert td.is_initialized()  # not after a failure: another rank may never reach the barrier
    td.destroy_process_group()
