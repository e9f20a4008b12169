"""Asynchronous generation on the tiny world: synchronous vs fixed lag 1 and 2 vs bounded staleness, same placement.

    python benchmarks/async.py                                   # 3 seeds, the default recipe, 100 steps
    python benchmarks/async.py --seeds 0 --steps 3 --eval-every 0 train.batch_size=32   # a smoke run

Every mode runs with the same placement: the generation worker on one core (--generator-core), the trainer
on another (--trainer-core), the layout of a generation server on its own GPUs. "sync" is fixed lag 0 in
that placement (the synchronous loop: the worker generates step t from version t-1 while the trainer
waits, then the trainer updates while the worker waits), so the speed-ups compare overlap against no
overlap on the same hardware. "sync-one-process" is today's loop in one process using every core for
every phase, reported without a target. Per mode: median s/step (time/step of metrics.jsonl: generation
wait, rewards, update, weight publication; evaluation excluded), steps/s over sync, held-out greedy
accuracy after the same number of steps (mean over seeds), and the training minutes until held-out
accuracy first reached --target (the sum of time/step up to that evaluation). Targets (issue 27): lag 1
>= 1.6x steps/s, final accuracy within 3 points of sync, time to 90% >= 1.4x shorter.
Writes benchmarks/results/async.json. Timings depend on the machine being otherwise idle.

With a vLLM server as the generator (rollout.engine=server, r1kit.rollout.remote_worker): start
`r1kit serve-gen builtin:tiny-sft -- --dtype float32` on its own cores (taskset -c 1 on a 2-core CPU) and run
the benchmark on the others (taskset -c 0), then

    python benchmarks/async.py --server-url http://127.0.0.1:8000 --modes server-sync server-lag1 \
        --out benchmarks/results/async-server.json

"server-sync" is the synchronous loop with the server (generate, then train, then push), "server-lag1"
fixed lag 1 (the server samples step t+1 while the trainer trains step t; a thread pushes); their speed-up
is against server-sync.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from r1kit.recipe import load_recipe
from r1kit.trainer import train

MODES = {  # name -> overrides of rollout.asynchronous
    "sync": ["mode=fixed_lag", "lag=0"],
    "lag1": ["mode=fixed_lag", "lag=1"],
    "lag2": ["mode=fixed_lag", "lag=2"],
    "bounded2": ["mode=bounded", "max_staleness=2"],
    "sync-one-process": ["mode=sync"],
    "server-sync": ["mode=sync"],  # rollout.engine=server at --server-url
    "server-lag1": ["mode=fixed_lag", "lag=1"],
}
LOCAL_MODES = [m for m in MODES if not m.startswith("server-")]


def run_one(mode: str, seed: int, args) -> dict:
    if mode.startswith("server-"):  # placed by the server's and the benchmark's own taskset
        if not args.server_url:
            raise SystemExit(f"mode {mode} needs --server-url (a running `r1kit serve-gen`)")
        placed = ["rollout.engine=server", f"services.generation_url={args.server_url}"]
    else:
        placed = [] if mode == "sync-one-process" else [
            f"rollout.asynchronous.generator_cores=[{args.generator_core}]",
            f"rollout.asynchronous.trainer_cores=[{args.trainer_core}]"]
    name = f"bench-async-{mode}-seed{seed}"
    overrides = [f"seed={seed}", f"name={name}", f"output_dir={args.output_dir}", "log.progress=false",
                 "log.report=false", f"train.max_steps={args.steps}", f"eval.every={args.eval_every}",
                 "train.save_every=0", *[f"rollout.asynchronous.{o}" for o in MODES[mode]], *placed, *args.overrides]
    cfg = load_recipe(args.recipe, overrides)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    start = time.time()
    summary = train(cfg)
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    step_times = [m["time/step"] for m in lines]
    elapsed = {m["step"]: sum(step_times[:m["step"]]) for m in lines}  # training seconds after each step
    history = summary["eval_history"]
    reached = next((s for s, acc in history if acc is not None and acc >= args.target and s > 0), None)
    return {"mode": mode, "seed": seed, "steps": summary["steps"], "median_s_per_step": statistics.median(step_times),
            "accuracy_before": summary["accuracy_before"], "accuracy_after": summary["accuracy_after"],
            "eval_history": history, "minutes_to_target": None if reached is None else elapsed[reached] / 60,
            "staleness_mean": statistics.mean(m.get("async/staleness_mean", 0.0) for m in lines),
            "wall_seconds": time.time() - start}


def aggregate(runs: list[dict]) -> dict:
    by_mode: dict[str, list[dict]] = {}
    for r in runs:
        by_mode.setdefault(r["mode"], []).append(r)
    table = {}
    for mode, rs in by_mode.items():
        reached = [r["minutes_to_target"] for r in rs if r["minutes_to_target"] is not None]
        accuracies = [r["accuracy_after"] for r in rs if r["accuracy_after"] is not None]
        table[mode] = {"median_s_per_step": statistics.median(r["median_s_per_step"] for r in rs),
                       "accuracy_after": statistics.mean(accuracies) if accuracies else None,
                       "minutes_to_target": statistics.mean(reached) if len(reached) == len(rs) else None,
                       "seeds_reaching_target": len(reached),
                       "staleness_mean": statistics.mean(r["staleness_mean"] for r in rs)}
    for mode, row in table.items():
        base = table.get("server-sync" if mode.startswith("server-") else "sync")
        row["speedup"] = base["median_s_per_step"] / row["median_s_per_step"] if base else None
        row["accuracy_vs_sync"] = (row["accuracy_after"] - base["accuracy_after"]
                                   if base and None not in (row["accuracy_after"], base["accuracy_after"]) else None)
        row["time_to_target_speedup"] = (base["minutes_to_target"] / row["minutes_to_target"]
                                         if base and base["minutes_to_target"] and row["minutes_to_target"] else None)
    return table


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=None, help="recipe (default: the built-in tiny world)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.9, help="held-out greedy accuracy for time-to-target")
    parser.add_argument("--modes", nargs="+", default=LOCAL_MODES, choices=list(MODES))
    parser.add_argument("--server-url", default=None, help="a running `r1kit serve-gen` for the server-* modes")
    parser.add_argument("--generator-core", type=int, default=1)
    parser.add_argument("--trainer-core", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/bench")
    parser.add_argument("--out", default="benchmarks/results/async.json")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.batch_size=32")
    args = parser.parse_args()

    runs = [run_one(mode, seed, args) for seed in args.seeds for mode in args.modes]  # modes alternate per seed
    table = aggregate(runs)
    print(f"\n{'mode':<18}{'s/step':>8}{'speed-up':>10}{'acc after':>11}{'vs sync':>9}{'min to ' + str(args.target):>12}"
          f"{'x shorter':>11}{'staleness':>11}")
    for mode, row in table.items():
        print(f"{mode:<18}{row['median_s_per_step']:>8.3f}{fmt(row['speedup'], '.2f'):>10}"
              f"{fmt(row['accuracy_after'], '.3f'):>11}{fmt(row['accuracy_vs_sync'], '+.3f'):>9}"
              f"{fmt(row['minutes_to_target'], '.2f'):>12}{fmt(row['time_to_target_speedup'], '.2f'):>11}"
              f"{row['staleness_mean']:>11.2f}")
    result = {"benchmark": "async", "argv": vars(args), "table": table, "runs": runs,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "load_average_at_end": os.getloadavg()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
