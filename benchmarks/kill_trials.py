"""kill -9 trials: a run killed at a random moment, then resumed, must end with the weights of a run never killed.

    python benchmarks/kill_trials.py --trials 8
    python benchmarks/kill_trials.py --trials 6 --prune --kill-resume   # pruning every step; the resume killed too
    python benchmarks/kill_trials.py --trials 8 --out benchmarks/results/kill_trials-lag1.json \
        rollout.asynchronous.mode=fixed_lag rollout.asynchronous.lag=1   # asynchronous generation, batches in flight

Each trial starts `r1kit train` (a small random model, 6 steps, a checkpoint every 2), sends SIGKILL after a
random moment (seeded: a random time after a random step's metrics line), checks that every checkpoint left behind is complete (`list_checkpoints` counts it and
its checksums verify), resumes with train.resume_from=latest, and compares final/ with an uninterrupted run bit
for bit. A kill before the first checkpoint resumes from step 0. --prune checkpoints every step and keeps one,
so the run prunes after every step and kills land in the middle of pruning too. --kill-resume also kills the
first resume after a random share of its set-up (verifying checksums, loading state), then resumes again.
Recipe overrides after the options apply to every run (e.g. asynchronous generation, whose batches in
flight are part of the checkpoint). Prints a table and writes benchmarks/results/kill_trials[-prune][-kill-resume].json
(or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["train.batch_size=8", "rollout.num_generations=4", "train.micro_batch_size=4",
            "rollout.max_completion_length=12", "data.eval_size=4", "eval.max_new_tokens=12", "log.progress=false",
            "log.report=false", "rewards=[{name: unique_chars}]", "train.learning_rate=1e-3", "train.max_steps=6",
            "train.save_every=2", "eval.before=false"]


def train(model_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "r1kit", "train", f"model.name_or_path={model_dir}", f"output_dir={out}", "name=t",
           *SETTINGS, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def complete(checkpoint: Path) -> bool:
    from r1kit.checkpoint import CheckpointError, verify_checksums

    try:
        verify_checksums(checkpoint)
    except CheckpointError:
        return False
    return all((checkpoint / f).exists() for f in ("model.safetensors", "trainer_state.pt", "accelerator"))


def kill_after(proc: subprocess.Popen, delay: float, metrics: Path | None = None, steps: int = 0) -> bool:
    """SIGKILL `proc` `delay` seconds after its metrics.jsonl holds `steps` lines (steps 0: after its start),
    unless it ended; True when it was killed. Waiting for a step, not a wall time, lands kills inside the run
    however busy the machine is."""
    while steps and proc.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= steps):
        time.sleep(0.05)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prune", action="store_true", help="a checkpoint every step, keep 1: pruning every step")
    parser.add_argument("--kill-resume", action="store_true", help="kill the first resume too, during its set-up")
    parser.add_argument("--out", default=None, help="results file (default: benchmarks/results/kill_trials[...].json)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run")
    args = parser.parse_args()
    extra = ["train.save_every=1", "train.keep_checkpoints=1"] if args.prune else []
    rng = random.Random(args.seed)
    from r1kit.checkpoint import list_checkpoints
    from r1kit.models import build_tiny_model, build_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = build_tiny_tokenizer()
        build_tiny_model(tok, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4).save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        start = time.time()
        straight = train(tmp / "model", tmp / "straight", *extra, *args.overrides)
        assert straight.wait() == 0, straight.stderr.read()
        full_seconds = time.time() - start
        reference = weights(tmp / "straight" / "t")
        rows = []
        for trial in range(args.trials):
            out = tmp / f"trial-{trial}"
            after_step, delay = rng.randrange(6), rng.uniform(0.0, 2.0)  # from the step's log line into the next
            proc = train(tmp / "model", out, *extra, *args.overrides)
            killed = kill_after(proc, delay, out / "t" / "metrics.jsonl", after_step)
            ckpts = out / "t" / "checkpoints"
            left = list_checkpoints(ckpts)  # what a resume may use: every one must be whole
            whole = all(complete(p) for p in left)  # before the resume prunes old checkpoints
            resume_killed = False
            if args.kill_resume:  # the resume's set-up is about the first 40% of a run this short
                resume_killed = kill_after(train(tmp / "model", out, *extra, *args.overrides, "train.resume_from=latest"),
                                           rng.uniform(0.1, 0.45) * full_seconds)
                whole = whole and all(complete(p) for p in list_checkpoints(ckpts))
            resumed = train(tmp / "model", out, *extra, *args.overrides, "train.resume_from=latest")
            ok = resumed.wait() == 0
            result = weights(out / "t") if ok else {}
            identical = ok and all((result[k] == reference[k]).all().item() for k in reference)
            rows.append({"trial": trial, "kill_after_step": after_step, "then_s": round(delay, 2), "killed": killed,
                         "resume_killed": resume_killed,
                         "checkpoints_left": [p.name for p in left], "all_complete": whole,
                         "resumed": ok, "identical": identical,
                         "error": None if ok else resumed.stderr.read().strip().splitlines()[-1][:200]})
    print(f"{'trial':>5} {'after step':>10} {'then s':>6} {'killed':>6} {'resume killed':>13} {'checkpoints left':<18} "
          f"{'resumed':>7} {'identical':>9}")
    for r in rows:
        print(f"{r['trial']:>5} {r['kill_after_step']:>10} {r['then_s']:>6} {str(r['killed']):>6} "
              f"{str(r['resume_killed']):>13} {','.join(r['checkpoints_left']) or '-':<18} {str(r['resumed']):>7} "
              f"{str(r['identical']):>9}")
    summary = {"trials": len(rows), "killed": sum(r["killed"] for r in rows),
               "identical": sum(r["identical"] for r in rows), "failed": sum(not r["resumed"] for r in rows),
               "incomplete_checkpoints": sum(not r["all_complete"] for r in rows),
               "resumes_killed": sum(r["resume_killed"] for r in rows), "prune_every_step": args.prune,
               "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]}}
    print(summary)
    name = "kill_trials" + ("-prune" if args.prune else "") + ("-kill-resume" if args.kill_resume else "")
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.json"
    path.write_text(json.dumps({"summary": summary, "rows": rows, "straight_run_seconds": round(full_seconds),
                                "overrides": args.overrides},
                               indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
