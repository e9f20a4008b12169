"""r1kit generate: row format SFT reads, filtering, resume after a kill (torn files, SIGKILL), refusals, parquet."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1kit.cli import main
from r1kit.config import ConfigError
from r1kit.recipe import load_recipe
from r1kit.generate import generate_data

# the shipped tiny SFT model, HF engine; short runs of the tiny world's training prompts
BASE = ["model.name_or_path=builtin:tiny-sft", "log.progress=false", "generate.n=4", "generate.batch_size=2",
        "generate.max_new_tokens=48"]


def run(output, *overrides, limit=6):
    cfg = load_recipe(None, [*BASE, f"generate.limit={limit}", f"generate.output={output}", *overrides])
    return generate_data(cfg)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run every resumed run must reproduce exactly: 6 prompts x 4 samples, batches of 2."""
    out = tmp_path_factory.mktemp("reference") / "all.jsonl"
    summary = run(out)
    return out, summary


def test_rows_have_the_chat_format_and_counts(reference):
    out, summary = reference
    rows = read_rows(out)
    assert len(rows) == 24 and summary["rows_written"] == 24 and summary["samples"] == 24 and summary["prompts"] == 6
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(i, j) for i in range(6) for j in range(4)]
    for r in rows:
        user, assistant = r["messages"]  # data.system_prompt=none: no system turn
        assert user["role"] == "user" and "How many" in user["content"]
        assert assistant == {"role": "assistant", "content": r["completion"]}
        assert r["prompt"].startswith("<|user|>") and r["prompt"].endswith("<|assistant|>")
        assert r["finish_reason"] in ("stop", "length") and 0 < r["num_tokens"] <= 48
        assert r["rewards"] == {"accuracy": float(r["correct"])} and r["reward"] == float(r["correct"])
    texts = {r["completion"] for r in rows if r["prompt_index"] == 0}
    assert len(texts) > 1  # sampled at T=0.6, not greedy
    correct = sum(r["correct"] for r in rows)
    assert summary["pass_rate"] == correct / 24
    assert json.loads(Path(f"{out}.summary.json").read_text())["rows_written"] == 24


def test_sft_trains_on_the_output(reference, small_model_dir, tmp_path, capsys):
    out, _ = reference
    code = main(["sft", f"sft.source={out}", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}",
                 "name=distilled", "sft.steps=2", "sft.batch_size=4", "sft.warmup_steps=0", "sft.eval_every=0",
                 "data.eval_size=2", "eval.max_new_tokens=4", "log.progress=false"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "distilled" / "final").is_dir()


def test_keep_correct_and_keep_reward_are_the_correct_subset(reference, tmp_path):
    out, _ = reference
    correct = [r for r in read_rows(out) if r["correct"]]
    assert correct  # a few samples of the tiny model are right (seeded: always the same ones)
    summary = run(tmp_path / "correct.jsonl", "generate.keep=correct")
    assert read_rows(tmp_path / "correct.jsonl") == correct
    assert summary["rows_written"] == len(correct) and summary["samples"] == 24
    run(tmp_path / "reward.jsonl", "generate.keep=reward", "generate.min_reward=1.0")
    assert read_rows(tmp_path / "reward.jsonl") == correct


def _copy_output(src: Path, dst: Path) -> None:
    for suffix in ("", ".manifest.json", ".progress.jsonl"):
        shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


@pytest.mark.parametrize("confirmed, rows_cut, progress_tail", [
    (3, "mid_line", b""),  # killed while writing prompt 3's rows: a torn row, no progress line (mid-batch)
    (3, "all", b'{"prompt_index": 3, "samp'),  # prompt 3's rows written, its progress line torn
    (4, "none", b""),  # killed between batches
    (0, "mid_line", b""),  # killed inside the first prompt
])
def test_resume_after_a_kill_writes_exactly_the_uninterrupted_rows(reference, tmp_path, confirmed, rows_cut,
                                                                   progress_tail):
    out, _ = reference
    resumed = tmp_path / "resumed.jsonl"
    _copy_output(out, resumed)
    entries = Path(f"{out}.progress.jsonl").read_bytes().splitlines(keepends=True)
    Path(f"{resumed}.progress.jsonl").write_bytes(b"".join(entries[:confirmed]) + progress_tail)
    start = json.loads(entries[confirmed - 1])["end_offset"] if confirmed else 0
    end = json.loads(entries[confirmed])["end_offset"]
    cut = {"none": start, "mid_line": start + 100, "all": end}[rows_cut]
    os.truncate(resumed, cut)
    summary = run(resumed)
    assert resumed.read_bytes() == out.read_bytes()
    assert Path(f"{resumed}.progress.jsonl").read_bytes() == Path(f"{out}.progress.jsonl").read_bytes()
    assert summary["rows_written"] == 24 and summary["session"]["prompts"] == 6 - confirmed


@pytest.mark.slow  # a generate run killed and rerun in subprocesses
def test_sigkill_then_rerun_gives_the_uninterrupted_rows(tmp_path):
    overrides = [*BASE, "generate.limit=40", "generate.keep=correct"]
    killed = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "r1kit", "generate", *overrides, f"generate.output={killed}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = Path(f"{killed}.progress.jsonl")
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if progress.exists() and progress.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(60) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done_at_kill = progress.read_bytes().count(b"\n")
    assert done_at_kill < 40  # killed mid-run
    summary = generate_data(load_recipe(None, [*overrides, f"generate.output={killed}"]))
    assert summary["session"]["prompts"] == 40 - done_at_kill
    whole = tmp_path / "whole.jsonl"
    generate_data(load_recipe(None, [*overrides, f"generate.output={whole}"]))
    assert killed.read_bytes() == whole.read_bytes()
    assert not Path(f"{killed}.lock").exists()


def test_other_settings_or_foreign_files_are_refused_untouched(reference, tmp_path, capsys):
    out, _ = reference
    copy = tmp_path / "copy.jsonl"
    _copy_output(out, copy)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError) as error:
        run(copy, "generate.temperature=0.7", "seed=3")
    message = str(error.value)
    assert str(copy) in message and f"{copy}.manifest.json" in message
    assert "generate.temperature: 0.6 -> 0.7" in message and "seed: 0 -> 3" in message
    assert main(["generate", *BASE, "generate.limit=6", f"generate.output={copy}", "generate.n=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generate.n: 4 -> 2" in err
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"mine": 1}\n')
    with pytest.raises(FileExistsError, match="foreign.jsonl exists but .*foreign.jsonl.manifest.json does not"):
        run(foreign)
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p != foreign} == before
    assert foreign.read_text() == '{"mine": 1}\n'


def test_a_second_writer_on_the_same_output_is_refused(tmp_path):
    from r1kit.generate import OutputFiles, _exclusive

    output = tmp_path / "busy.jsonl"
    with _exclusive(OutputFiles(output)):  # as a running `r1kit generate` holds it
        with pytest.raises(FileExistsError, match=f"another r1kit generate is writing {output} "):
            run(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written; the lock is gone with its holder


def test_a_finished_output_is_not_sampled_again(reference, tmp_path):
    out, _ = reference
    again = tmp_path / "again.jsonl"
    _copy_output(out, again)
    summary = run(again)
    assert summary["session"] == {"prompts": 0, "tokens": 0, "seconds": 0.0, "tokens_per_second": None}
    assert again.read_bytes() == out.read_bytes() and summary["rows_written"] == 24


def test_parquet_output_holds_the_same_rows(reference, tmp_path):
    import pyarrow.parquet as pq

    out, _ = reference
    parquet = tmp_path / "rows.parquet"
    run(parquet)
    assert pq.read_table(parquet).to_pylist() == read_rows(out)
    assert not Path(f"{parquet}.partial.jsonl").exists()
    # killed before the conversion, mid-way through prompt 2: the working jsonl is cut back, resumed, converted
    resumed = tmp_path / "resumed.parquet"
    shutil.copyfile(f"{out}.manifest.json", f"{resumed}.manifest.json")  # the output's path is not a setting
    entries = Path(f"{out}.progress.jsonl").read_bytes().splitlines(keepends=True)
    Path(f"{resumed}.progress.jsonl").write_bytes(b"".join(entries[:2]))
    Path(f"{resumed}.partial.jsonl").write_bytes(out.read_bytes()[:json.loads(entries[1])["end_offset"] + 70])
    assert run(resumed)["session"]["prompts"] == 4
    assert pq.read_table(resumed).to_pylist() == read_rows(out)


def test_benchmark_flag_and_cli_summary(tmp_path, capsys):
    output = tmp_path / "gsm8k.jsonl"
    assert main(["generate", *BASE, "--benchmark", "gsm8k", "--limit", "2", "--output", str(output),
                 "generate.n=2", "generate.max_new_tokens=3"]) == 0
    rows = read_rows(output)
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())["config"]
    assert manifest["prompts"]["source"] == "gsm8k" and manifest["prompts"]["split"] == "test"
    assert manifest["answers"]["checker"] == "numeric"  # the benchmark's own checker
    assert len(rows) == 4 and all(r["finish_reason"] == "length" and r["num_tokens"] == 3 for r in rows)
    assert "truncated 100.0%" in capsys.readouterr().out  # 3 tokens never finish an answer


def test_bad_generate_settings_name_the_key():
    for override, message in [("generate.n=0", "generate.n must be >= 1"),
                              ("generate.output=x.csv", "generate.output must end with .jsonl or .parquet"),
                              ("generate.keep=reward", "generate.keep=reward needs generate.min_reward"),
                              ("generate.keep=best", "generate.keep: expected one of ['all', 'correct', 'reward']")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            load_recipe(None, [override])


def _resume_matches(tmp_path, overrides, name):
    """A full run, then the same output cut back mid-way through prompt 3 and resumed: the same bytes."""
    full, resumed = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-resumed.jsonl"
    summary = run(full, *overrides)
    rows = read_rows(full)
    assert len(rows) == 24 and [(r["prompt_index"], r["sample_index"]) for r in rows] == \
        [(i, j) for i in range(6) for j in range(4)]
    assert all(r["messages"][-1] == {"role": "assistant", "content": r["completion"]} and r["num_tokens"] > 0
               for r in rows)
    assert summary["session"]["tokens_per_second"] > 0
    _copy_output(full, resumed)
    entries = Path(f"{full}.progress.jsonl").read_bytes().splitlines(keepends=True)
    Path(f"{resumed}.progress.jsonl").write_bytes(b"".join(entries[:3]))
    os.truncate(resumed, json.loads(entries[2])["end_offset"] + 50)
    assert run(resumed, *overrides)["session"]["prompts"] == 3
    assert resumed.read_bytes() == full.read_bytes()
    return rows


@pytest.mark.vllm
def test_vllm_engine_generates_resumable_rows(tmp_path):
    _resume_matches(tmp_path, ["rollout.engine=vllm", "rollout.vllm.kv_cache_gb=1", "rollout.vllm.max_model_len=512"],
                    "vllm")


@pytest.mark.vllm
def test_server_engine_generates_resumable_rows(tmp_path, monkeypatch):
    from test_distributed import free_port
    from test_vllm_server import TOKEN, GenServer

    server = GenServer("builtin:tiny-sft", free_port(), tmp_path / "serve-gen.log").start()
    monkeypatch.setenv("R1KIT_SERVICE_TOKEN", TOKEN)
    try:
        _resume_matches(tmp_path, ["rollout.engine=server", f"services.generation_url={server.url}"], "server")
    finally:
        server.stop()
