"""Asynchronous generation (r1kit.producer, r1kit.rollout.worker): a fixed lag is exact and deterministic,
k = 0 is the synchronous run, a resumed run trains the batches that were in flight, bounded staleness
holds its bound, and a worker that dies or hangs stops the trainer with a line naming it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from r1kit.config import ConfigError
from r1kit.recipe import load_recipe
from r1kit.rollout.worker import GenerationWorker, Placement, Request, WorkerError
from r1kit.trainer import train
from r1kit.types import SamplingParams
from test_trainer import cfg_for, weights

QUIET = ["eval.before=false", "eval.after=false"]


def lagged(k: int, *extra):
    """Fixed lag k, the worker with the trainer's thread count (the same kernels: bitwise the same samples)."""
    return ["rollout.asynchronous.mode=fixed_lag", f"rollout.asynchronous.lag={k}",
            f"rollout.asynchronous.generator_threads={torch.get_num_threads()}", *QUIET, *extra]


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "t" / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    wa, wb = weights(a / "t" / "final"), weights(b / "t" / "final")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_lag_zero_in_the_worker_is_bitwise_the_synchronous_run(lora, small_model_dir, tmp_path):
    """The worker's copy samples what the policy samples: all weights, or a LoRA model's adapters, sent each step."""
    adapters = ["model.lora.enabled=true", "model.lora.r=4"] if lora else []
    train(cfg_for(small_model_dir, tmp_path / "sync", "train.max_steps=3", *QUIET, *adapters))
    train(cfg_for(small_model_dir, tmp_path / "lag0", "train.max_steps=3", *lagged(0), *adapters))
    assert same_weights(tmp_path / "sync", tmp_path / "lag0")
    sync, lag0 = metrics(tmp_path / "sync"), metrics(tmp_path / "lag0")
    assert [m["reward"] for m in sync] == [m["reward"] for m in lag0]
    assert [m["async/staleness_max"] for m in lag0] == [0.0, 0.0, 0.0]


@pytest.mark.slow  # kills and resumes a lag-1 run (about a minute)
def test_a_lag_one_run_killed_and_resumed_trains_the_batches_in_flight(small_model_dir, tmp_path):
    """Step 3 of a lag-1 run trains a batch sampled from version 1; the checkpoint after step 2 holds it."""
    straight = tmp_path / "straight"
    train(cfg_for(small_model_dir, straight, "train.max_steps=4", "train.save_every=2", *lagged(1)))
    assert [m["async/staleness_max"] for m in metrics(straight)] == [0.0, 1.0, 1.0, 1.0]

    import reward_fixtures

    reward_fixtures.CALLS["n"] = 0
    crashing = ["rewards=[{name: reward_fixtures.fail_on_third_call}]", "train.max_steps=4", "train.save_every=2",
                *lagged(1)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(small_model_dir, tmp_path / "resumed", *crashing))
    saved = torch.load(tmp_path / "resumed" / "t" / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    in_flight = saved["run_state"]["in_flight"]
    assert in_flight["next_batch"] == 3 and [list(rank) for rank in in_flight["ranks"]] == [[3]]
    assert {c["policy_version"] for c in in_flight["ranks"][0][3]["completions"]} == {1}
    train(cfg_for(small_model_dir, tmp_path / "resumed", *crashing, "train.resume_from=latest"))
    assert same_weights(straight, tmp_path / "resumed")
    assert [m["step"] for m in metrics(tmp_path / "resumed")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_lag_one_runs_are_bitwise_equal_and_differ_from_the_synchronous_run(small_model_dir, tmp_path):
    for name in ("a", "b"):
        train(cfg_for(small_model_dir, tmp_path / name, "train.max_steps=3", *lagged(1)))
    train(cfg_for(small_model_dir, tmp_path / "sync", "train.max_steps=3", *QUIET))
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert not same_weights(tmp_path / "a", tmp_path / "sync")  # step 2 trained version 0's samples


@pytest.mark.slow
def test_bounded_staleness_holds_its_bound_and_a_smaller_bound_drops_what_is_older(small_model_dir, tmp_path):
    bounded = ["rollout.asynchronous.mode=bounded", "rollout.asynchronous.max_staleness=2", *QUIET,
               "train.save_every=2"]
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=4", *bounded))
    first = metrics(tmp_path)
    assert all(m["async/staleness_max"] <= 2 for m in first)
    assert [m["async/batch"] for m in first] == [1, 2, 3, 4]
    state = torch.load(tmp_path / "t" / "checkpoints" / "step-4" / "trainer_state.pt", weights_only=True)
    assert state["run_state"]["in_flight"]["ranks"] == [{}]  # the last step requests nothing beyond max_steps
    state = torch.load(tmp_path / "t" / "checkpoints" / "step-2" / "trainer_state.pt", weights_only=True)
    older = [b for b, e in state["run_state"]["in_flight"]["ranks"][0].items() if 2 - e["version"] > 0]
    # resume at step 2 with max_staleness 0: every saved batch older than version 2 is dropped and counted
    import shutil

    shutil.rmtree(tmp_path / "t" / "checkpoints" / "step-4")
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=4", *bounded, "rollout.asynchronous.max_staleness=0",
                  "train.resume_from=latest"))
    resumed = [m for m in metrics(tmp_path) if m["step"] > 2]
    assert resumed[0]["async/dropped_batches"] == len(older) and resumed[0]["async/batch"] == 3 + len(older)
    assert all(m["async/staleness_max"] == 0 for m in resumed)


def test_async_generation_refuses_what_it_does_not_support(small_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="rollout.engine=vllm is not available yet"):
        cfg_for(small_model_dir, tmp_path, "rollout.asynchronous.mode=fixed_lag", "rollout.engine=vllm")
    with pytest.raises(ConfigError, match="generator_cores and generator_threads place the generation worker"):
        cfg_for(small_model_dir, tmp_path, "rollout.asynchronous.mode=fixed_lag", "rollout.engine=server",
                "services.generation_url=http://127.0.0.1:1", "rollout.asynchronous.generator_cores=[0]")
    from r1kit.config import AsyncCfg
    from r1kit.run import _check_async

    with pytest.raises(ConfigError, match="rollout.engine=server runs in one training process .strategy ddp"):
        _check_async(AsyncCfg(mode="fixed_lag"), "ddp", "server")
    with pytest.raises(ConfigError, match="dynamic sampling"):
        cfg_for(small_model_dir, tmp_path, "rollout.asynchronous.mode=bounded", "algo.loss_type=dapo")
    with pytest.raises(ConfigError, match="rollout.asynchronous.lag must be >= 0"):
        cfg_for(small_model_dir, tmp_path, "rollout.asynchronous.lag=-1")
    with pytest.raises(ConfigError, match="mode"):
        cfg_for(small_model_dir, tmp_path, "rollout.asynchronous.mode=off")
    with pytest.raises(ConfigError, match=r"generator_cores=\[4096\]: CPU \[4096\] is not available"):
        train(cfg_for(small_model_dir, tmp_path, "rollout.asynchronous.mode=fixed_lag",
                      "rollout.asynchronous.generator_cores=[4096]"))
    assert not (tmp_path / "t").exists()  # refused before anything was written


def _worker(model, tokenizer, timeout_s=60.0):
    worker = GenerationWorker(model, tokenizer, {}, Placement(), num_slots=2, timeout_s=timeout_s)
    worker.publish(model, 0)
    return worker


@pytest.mark.slow  # waits out a hung worker's timeout
def test_a_worker_that_dies_or_hangs_stops_the_trainer_with_its_name(small_model, tiny_tokenizer):
    request = Request(batch=1, prompts=[[1, 2, 3]], n=2, sampling=SamplingParams(8, seed=1), version=0, exact=True)
    worker = _worker(small_model, tiny_tokenizer)
    try:
        worker.submit(request)
        batch, version, completions = worker.receive("batch 1")
        assert (batch, version, len(completions)) == (1, 0, 2)
        assert {c.policy_version for c in completions} == {0}
        os.kill(worker.process.pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError, match=rf"generation worker \(pid {worker.process.pid}\) died"):
            worker.receive("batch 2")
        assert time.monotonic() - start < 10
    finally:
        worker.close()

    worker = _worker(small_model, tiny_tokenizer, timeout_s=2.0)
    try:
        os.kill(worker.process.pid, signal.SIGSTOP)  # alive, answering nothing
        worker.submit(request)
        with pytest.raises(WorkerError, match=r"gave no batch 1 within 2 s .* it was stopped"):
            worker.receive("batch 1")
        assert not worker.process.is_alive()
    finally:
        worker.close()


@pytest.mark.slow  # waits out the worker's timeout
def test_a_worker_asked_for_weights_it_never_gets_reports_it(small_model, tiny_tokenizer):
    worker = GenerationWorker(small_model, tiny_tokenizer, {}, Placement(), num_slots=2, timeout_s=8.0)
    try:
        worker.publish(small_model, 0)
        worker.submit(Request(batch=1, prompts=[[1, 2]], n=2, sampling=SamplingParams(4, seed=1), version=5, exact=True))
        with pytest.raises(WorkerError, match="failed on batch 1: .*no weights of version exactly 5 arrived within 4 s"):
            worker.receive("batch 1")
    finally:
        worker.close()


ORPHAN = """
import sys, time
from r1kit.models import build_tiny_model, build_tiny_tokenizer
from r1kit.rollout.worker import GenerationWorker, Placement
if __name__ == "__main__":
    tok = build_tiny_tokenizer()
    worker = GenerationWorker(build_tiny_model(tok, seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=2), tok, {}, Placement(), 1, 120.0)
    print(worker.process.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow  # a trainer and its worker in subprocesses
def test_a_trainer_killed_with_sigkill_leaves_no_worker(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(ORPHAN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker_pid = int(trainer.stdout.readline())
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _alive(worker_pid):
            time.sleep(0.2)
        assert not _alive(worker_pid)
    finally:
        trainer.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_lag_one_run_of_the_tiny_world_learns(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).parent.parent / "recipes" / "tiny" / "grpo.yaml"
    cfg = load_recipe(recipe, [f"output_dir={tmp_path}", "train.max_steps=50", "data.eval_size=200", "eval.every=0",
                               "log.progress=false", "train.save_every=0", "rollout.asynchronous.mode=fixed_lag",
                               "rollout.asynchronous.lag=1"])
    summary = train(cfg)
    assert summary["accuracy_after"] >= summary["accuracy_before"] + 0.30, summary


@pytest.mark.distributed
def test_two_ddp_ranks_with_half_the_prompts_each_equal_one_process_at_lag_one(small_model_dir, tmp_path):
    """Each rank's worker generates its share; 2 x B/2 = 1 x B holds in fixed-lag mode as in the synchronous loop."""
    from test_distributed import LAYOUT_ATOL, final_weights, launch, max_diff, recipe

    lag = {"num_generations": 4, "max_completion_length": 12, "asynchronous": {"mode": "fixed_lag", "lag": 1}}
    path = recipe(tmp_path, small_model_dir, rollout=lag)
    train(load_recipe(path, ["name=single"]))
    out = launch("ddp", path, "name=t")
    assert out.returncode == 0, out.stderr[-3000:]
    single, ddp = tmp_path / "runs" / "single", tmp_path / "runs" / "t"
    assert max_diff(final_weights(ddp), final_weights(single)) < LAYOUT_ATOL
    lines = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    mine = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward"] for m in lines] == pytest.approx([m["reward"] for m in mine], abs=1e-6)
    assert [m["async/staleness_max"] for m in lines] == [0.0, 1.0, 1.0]
    assert (ddp / "checkpoints" / "step-2").is_dir()
