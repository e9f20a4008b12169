"""Metrics sinks and console output: trackers read back with their own readers (TensorBoard's event
accumulator, W&B's offline run file), `log.report_to`, the progress bar in a log and in a narrow
terminal, and a clear error for a missing tracker package."""

import glob
import io
import re
import struct
import time

import pytest
from rich.console import Console

from r1kit.config import ConfigError, to_dict
from r1kit.recipe import load_recipe
from r1kit.logging import MetricsLogger, PhaseTimer, progress_bar
from r1kit.trackers import flatten, require_log_packages

SAMPLES = [{"step": 2, "prompt": "1+1?", "answer": "2", "completions": ["<answer>2</answer>", "a | b\nc"],
            "rewards": {"accuracy": [1.0, 0.0]}, "total": [1.0, 0.0]}]


def log_a_run(run_dir, report_to):
    cfg = load_recipe(None, [f"log.report_to={report_to}", "train.learning_rate=3e-5"])
    logger = MetricsLogger(run_dir, cfg.log, to_dict(cfg))
    for step in (1, 2, 3):
        logger.log(step, {"reward": 0.25 * step, "kl": float("nan"), "time/generate": 1.0})
        if step == 2:  # as the trainer does: a step's samples after its metrics (W&B steps only go forward)
            logger.log_samples(2, SAMPLES)
    logger.close()
    return cfg


def test_report_to_accepts_trl_names_and_rejects_others():
    assert load_recipe(None, ["log.report_to=[tensorboard, wandb]"]).log.report_to == ["tensorboard", "wandb"]
    assert load_recipe(None, []).log.report_to == []
    with pytest.raises(ConfigError, match=r"log.report_to\[0\]: expected one of \['tensorboard', 'wandb'\]"):
        load_recipe(None, ["log.report_to=[mlflow]"])


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'r1kit[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    log_a_run(tmp_path, "[tensorboard]")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward")] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert "time/generate" in events.Tags()["scalars"]
    hparams = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert hparams.session_start_info.hparams["train.learning_rate"].number_value == pytest.approx(3e-5)
    texts = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}
    config_text = texts["config/text_summary"][0].tensor_proto.string_val[0].decode()
    assert "learning_rate: 3.0e-05" in config_text
    (samples,) = texts["samples/text_summary"]
    table = samples.tensor_proto.string_val[0].decode()
    assert samples.step == 2 and "| 2 | 1+1? | 2 | <answer>2</answer> | 1.0 |" in table
    assert "a \\| b<br>c" in table  # a completion's pipe and newline do not break the table
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3  # the jsonl is written as before


def wandb_records(path):
    """The protobuf records of an offline run file (W&B's leveldb-style log: 7-byte file header,
    32 KiB blocks, each record chunk a 7-byte header: crc32, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
    return records


def test_wandb_offline_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install 'r1kit[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_a_run(tmp_path, "[wandb]")
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    for _ in range(60):  # wandb 0.31's finish() can return before its service has written the file out
        records = wandb_records(run_file)
        if any(r.HasField("exit") for r in records):
            break
        time.sleep(0.5)
    config = {}  # the config arrives with the run record, or (timing) as a config record of its own
    for r in records:
        updates = r.run.config.update if r.HasField("run") else r.config.update if r.HasField("config") else []
        config |= {u.key: u.value_json for u in updates}
    assert '"learning_rate":0.00003' in config["train"]  # the resolved config, as hyperparameters
    history = {}
    for r in records:
        if r.HasField("history"):
            items = {"/".join(i.nested_key) or i.key: i.value_json for i in r.history.item}
            history[int(items["_step"])] = items
    assert [history[s]["reward"] for s in (1, 2, 3)] == ["0.25", "0.5", "0.75"]
    assert history[2]["samples/_type"] == '"table-file"' and history[2]["samples/nrows"] == "2"
    (table,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "table" / "samples_*.json"))
    assert "<answer>2</answer>" in open(table).read()


@pytest.mark.parametrize("absent, overrides, message", [
    ("wandb", ["log.report_to=[tensorboard, wandb]"],
     r"^log.report_to lists wandb, which needs the wandb package: pip install 'r1kit\[wandb\]'$"),
    ("matplotlib", [], r"^log.report=true \(the default\) draws report.html with matplotlib: "
                       r"pip install matplotlib, or set log.report=false$")])
def test_a_missing_package_names_its_extra_before_training(monkeypatch, capsys, absent, overrides, message):
    import importlib.util

    from r1kit.cli import main

    real = importlib.util.find_spec
    present = {"tensorboard", "wandb", "matplotlib"} - {absent}  # installed or not here: only `absent` is missing
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == absent else object() if name in present else real(name, *a))
    with pytest.raises(ImportError, match=message):
        require_log_packages(load_recipe(None, overrides).log)
    assert main(["train", *overrides, "model.name_or_path=/nonexistent"]) == 1  # fails before loading the model
    assert re.match(message[1:-1].replace("^", ""), capsys.readouterr().err.removeprefix("r1kit train: error: "))


def test_flatten_config_for_hyperparameters():
    assert flatten({"train": {"lr": 1e-5, "resume_from": None}, "rewards": [{"name": "accuracy"}], "seed": 0}) == {
        "train.lr": 1e-5, "train.resume_from": "null", "rewards": '[{"name": "accuracy"}]', "seed": 0}


def drive(bar, steps=3):
    with bar:
        task = bar.add_task("grpo", total=steps, completed=0, info="")
        for step in range(1, steps + 1):
            bar.update(task, completed=step, info=f"reward 0.{step}  accuracy 0.{step}  mean_length 4{step}.5  t_step 1.2")


def test_progress_in_a_log_is_plain_lines():
    out = io.StringIO()
    drive(progress_bar(True, Console(file=out, force_terminal=False, width=80)))
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()  # no cursor movement or colour codes
    assert [line.split(" (")[0] for line in lines] == ["grpo 1/3", "grpo 3/3"]  # first and last; the rest throttled
    assert lines[-1].endswith("reward 0.3  accuracy 0.3  mean_length 43.5  t_step 1.2")


def test_progress_off_prints_nothing():
    out = io.StringIO()
    drive(progress_bar(False, Console(file=out, force_terminal=False)))
    assert out.getvalue() == ""


def test_progress_in_a_narrow_terminal_fits_its_width():
    out = io.StringIO()
    drive(progress_bar(True, Console(file=out, force_terminal=True, width=40)))
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    lines = [line for chunk in visible.split("\r") for line in chunk.splitlines() if line.strip()]
    assert lines and max(len(line) for line in lines) <= 40
    assert any("3/3" in line for line in lines)


def test_a_phase_ends_when_its_sync_returns():
    """On a GPU the trainer's timer syncs at each phase's end: work still queued when the phase's Python returns
    (an optimizer step's kernels) is counted in that phase, not the next (a sleeping sync stands for the GPU)."""
    calls = []
    timer = PhaseTimer(sync=lambda: (calls.append(1), time.sleep(0.05)))
    with timer("update"):
        pass
    with timer("update"):
        pass
    seconds = timer.pop()["time/update"]
    assert len(calls) == 2 and 0.1 <= seconds < 1.0


def test_each_evaluation_is_on_disk_as_it_finishes(tmp_path):
    """evals.jsonl: a stopped run's report still shows its held-out evaluations (summary.json is written at the end)."""
    import json

    cfg = load_recipe(None, ["log.report_to=[]"])
    logger = MetricsLogger(tmp_path, cfg.log)
    logger.log_eval(0, "before", {"eval/greedy_accuracy": 0.25, "eval/pass@4": float("nan")})
    logger.log_eval(5, "during", {"eval/greedy_accuracy": 0.5})
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert lines == [{"step": 0, "when": "before", "eval/greedy_accuracy": 0.25},  # NaN left out: strict JSON
                     {"step": 5, "when": "during", "eval/greedy_accuracy": 0.5}]
    MetricsLogger(tmp_path, cfg.log, resume=True).close()
    assert len((tmp_path / "evals.jsonl").read_text().splitlines()) == 2  # a resume keeps them (cut to its step)
    MetricsLogger(tmp_path, cfg.log).close()
    assert not (tmp_path / "evals.jsonl").exists()  # a new run starts its own


@pytest.mark.parametrize("shared, shown", [("lm_head.weight", False), ("model.layers.0.mlp.up_proj.weight", True)])
def test_a_tied_output_head_saves_without_a_notice(tmp_path, caplog, shared, shown):
    """Accelerate's "Removed shared tensor" notice for a tied head is r1kit's doing, not the user's: quiet; any other
    shared tensor (a user's own tying) still warns."""
    import torch
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1kit.logging import quiet_library_progress

    quiet_library_progress()
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, tie_word_embeddings=shared == "lm_head.weight")
    model = LlamaForCausalLM(config)
    if shared != "lm_head.weight":
        model.model.layers[0].mlp.up_proj.weight = model.model.layers[0].mlp.gate_proj.weight
    acc = Accelerator(cpu=True)
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with caplog.at_level("WARNING"):
        acc.save_state(str(tmp_path / "state"))
    assert ("Removed shared tensor" in caplog.text) == shown, caplog.text
