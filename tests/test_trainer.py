"""The GRPO trainer on a small random model: parameters move, the run directory is complete,
checkpoints are atomic and a resumed run continues exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from r1kit.recipe import load_recipe
from r1kit.trainer import train

FAST = ["train.batch_size=8", "rollout.num_generations=4", "train.micro_batch_size=4", "rollout.max_completion_length=12",
        "data.eval_size=4", "eval.max_new_tokens=12", "log.progress=false", "log.console_every=0", "log.samples_every=1",
        "log.report=false",  # the report has its own tests (test_report.py); drawing it here costs a second a run
        "rewards=[{name: reward_fixtures.length_reward}]", "train.learning_rate=1e-3"]


def cfg_for(model_dir, tmp_path, *extra):
    return load_recipe(None, [f"model.name_or_path={model_dir}", f"output_dir={tmp_path}", "name=t", *FAST, *extra])


def weights(path):
    return load_file(f"{path}/model.safetensors")


def test_a_step_changes_the_parameters_and_writes_the_run_dir(small_model_dir, tmp_path):
    summary = train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "train.save_every=1"))
    run = tmp_path / "t"
    before, after = weights(small_model_dir), weights(run / "final")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every tensor moved

    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints",
                                                "final", "summary.json"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in ["reward", "rewards/length_reward/mean", "rewards/length_reward/std", "completion/mean_length",
                "completion/max_length", "completion/truncated_fraction", "groups/zero_variance_fraction", "kl",
                "clip_fraction", "grad_norm", "lr", "loss", "time/generate", "time/reward", "time/update",
                "engine/logprob_gap_mean", "engine/logprob_gap_max"]:
        assert key in lines[0], key
    assert lines[0]["engine/logprob_gap_max"] < 1e-4  # HF engine and trainer agree
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert len(sample["completions"]) == 4 and "length_reward" in sample["rewards"]
    assert set(summary) >= {"accuracy_before", "accuracy_after", "steps", "wall_seconds"}
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_reference_model_and_kl(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "algo.beta=0.1", "eval.before=false",
                  "eval.after=false"))
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert lines[1]["kl"] > 0 and "time/reference" in lines[1]


def test_crash_then_resume_continues_exactly(small_model_dir, tmp_path):
    straight = tmp_path / "straight"
    train(cfg_for(small_model_dir, straight, "train.max_steps=4", "train.save_every=2", "eval.before=false"))

    import reward_fixtures

    reward_fixtures.CALLS["n"] = 0
    crashing = ["rewards=[{name: reward_fixtures.fail_on_third_call}]", "train.max_steps=4", "train.save_every=2",
                "eval.before=false"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(small_model_dir, tmp_path / "resumed", *crashing))
    ckpts = tmp_path / "resumed" / "t" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2"]  # complete, nothing half-written
    train(cfg_for(small_model_dir, tmp_path / "resumed", *crashing, "train.resume_from=latest"))

    a, b = weights(straight / "t" / "final"), weights(tmp_path / "resumed" / "t" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_failed_save_leaves_no_partial_checkpoint(small_model_dir, tmp_path, monkeypatch):
    from r1kit import checkpoint

    cfg = cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "train.save_every=1", "eval.before=false")
    real_save = checkpoint.save_model

    def save_then_fail(model, tok, path, **kwargs):
        if "step-2" in str(path):
            real_save(model, tok, path, **kwargs)
            raise OSError("disk full")
        real_save(model, tok, path, **kwargs)

    monkeypatch.setattr(checkpoint, "save_model", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "t" / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-1"]


def test_refuses_to_overwrite_a_run(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "eval.before=false", "eval.after=false"))
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1"))


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_skipping_zero_advantage_rows_keeps_the_gradient(small_model, tiny_tokenizer, agg):
    """The trainer skips rows with zero advantage (beta = 0); the accumulated gradient must equal the full batch's."""
    from r1kit.algo.loss import policy_loss
    from r1kit.batch import Normaliser, completion_logprobs, make_batch
    from r1kit.config import Config
    from r1kit.data.templates import build_messages, encode_prompt
    from r1kit.rollout.hf import HFEngine
    from r1kit.trainer import _rows_with_gradient
    from r1kit.types import SamplingParams

    rows = [{"prompt_ids": encode_prompt(tiny_tokenizer, build_messages(q))} for q in ("1+2?", "3+4+5?")]
    out = HFEngine(small_model, tiny_tokenizer).generate([r["prompt_ids"] for r in rows], 4,
                                                         SamplingParams(max_new_tokens=10, seed=0))
    advantages = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # group 2 has zero variance
    batch = make_batch(out, rows, advantages, tiny_tokenizer.pad_token_id)

    def grads(chunks):
        small_model.zero_grad()
        for chunk in chunks:
            part = batch.select(chunk)
            lp = completion_logprobs(small_model, part)
            loss, _ = policy_loss(lp, lp.detach(), part.advantages, part.completion_mask, agg=agg, max_len=10)
            (loss * part.weight(agg, Normaliser(len(batch), int(batch.completion_mask.sum()), len(chunks)))).backward()
        return [p.grad.clone() for p in small_model.parameters()]

    active = _rows_with_gradient(batch, Config().algo.resolved(), num_processes=1)
    assert active.tolist() == [1, 2]
    full, skipped = grads([torch.arange(8)]), grads(active.split(1))
    for a, b in zip(full, skipped):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_a_batch_without_signal_makes_no_update(small_model_dir, tmp_path):
    """Every reward equal -> every advantage 0 -> nothing to backward; the step must not crash or move weights."""
    cfg = cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "eval.before=false", "eval.after=false",
                  "rewards=[{name: reward_fixtures.constant_reward}]")
    train(cfg)
    before, after = weights(small_model_dir), weights(tmp_path / "t" / "final")
    assert all(torch.equal(before[k], after[k]) for k in before)
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["update/rows_fraction"] == 0.0 and lines[0]["groups/zero_variance_fraction"] == 1.0


def test_lora_trains_adapters_and_saves_a_merged_model(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "eval.before=false", "eval.after=false",
                  "model.lora.enabled=true", "model.lora.r=4", "model.lora.target_modules=[q_proj, v_proj]",
                  "train.learning_rate=5e-2"))
    before, after = weights(small_model_dir), weights(tmp_path / "t" / "final")
    assert set(before) == set(after)  # merged: loads like the base model, no adapter keys
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


def test_peak_memory_is_the_processs_own_not_its_launchers():
    """memory/max_process_gb on a CPU: a worker started by a process holding 1 GiB does not report that GiB
    (getrusage's ru_maxrss would: Linux keeps the mark across fork and exec, as in every launcher's workers)."""
    import subprocess
    import sys

    held = torch.ones(2**28)  # 1 GiB resident in this process, the "launcher"
    probe = ("import resource; from r1kit.distributed import peak_resident_gb; "
             "print(peak_resident_gb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    del held
    peak, ru_maxrss = map(float, out.stdout.split())
    assert ru_maxrss > 1.0  # what the metric reported before: the launcher's GiB
    assert 0.05 < peak < 0.9  # the worker's own: its interpreter, torch and accelerate


@pytest.mark.parametrize("platform, unit", [("darwin", 1), ("freebsd14", 1024)])
def test_peak_memory_without_proc_reads_ru_maxrss_in_the_platforms_unit(monkeypatch, platform, unit):
    """No /proc (macOS, the BSDs): ru_maxrss, in bytes on macOS and KiB elsewhere (read as KiB, macOS was 1024x)."""
    import builtins
    import resource
    import sys

    from r1kit import distributed

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(resource, "getrusage", lambda who: type("Usage", (), {"ru_maxrss": 3 * 2**30 // unit})())
    assert distributed.peak_resident_gb() == pytest.approx(3.0)
