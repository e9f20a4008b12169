"""The GRPO family side by side on the tiny world: same seed, same wall-clock budget.

    python benchmarks/algorithms.py                    # grpo, dr_grpo, dapo, gspo x filter off/on, 3 min each
    python benchmarks/algorithms.py --minutes 1 --presets grpo dapo --seeds 0 1
    python benchmarks/algorithms.py --minutes 0 --steps 60    # a step budget instead (deterministic accuracy)
    python benchmarks/algorithms.py --minutes 0 --steps 30 --filters off --presets grpo cispo sapo luspo \
        --tag=-mu2 algo.num_iterations=2    # the newer objectives (they differ from grpo only when mu > 1)

"filter on" drops zero-variance groups: algo.min_group_std=0 (their completions leave the batch and
its normaliser); for dapo it is the preset's dynamic sampling (redraw until the batch is full of
informative groups), and "off" turns dynamic sampling off. Each run trains from the shipped SFT
start for --minutes of wall time (or --steps, whichever ends first) and is then evaluated greedily
on the 200 held-out problems. Writes benchmarks/results/algorithms.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from r1kit.recipe import load_recipe
from r1kit.trainer import train


def filter_overrides(preset: str, on: bool) -> list[str]:
    if preset == "dapo":
        return [f"algo.dynamic_sampling={str(on).lower()}"]
    return ["algo.min_group_std=0.0"] if on else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["grpo", "dr_grpo", "dapo", "gspo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget per run")
    parser.add_argument("--steps", type=int, default=1000, help="step cap per run")
    parser.add_argument("--filters", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="zero-variance filtering settings to run")
    parser.add_argument("--tag", default="", help="suffix for run names (e.g. when overrides differ)")
    parser.add_argument("--out", default="benchmarks/results/algorithms.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    results = []
    for preset in args.presets:
        for on in [f == "on" for f in args.filters]:
            for seed in args.seeds:
                name = f"bench-algo-{preset}-{'filter' if on else 'nofilter'}-seed{seed}{args.tag}"
                cfg = load_recipe(None, [f"seed={seed}", f"name={name}", "output_dir=runs/bench", "log.progress=false",
                                         "log.console_every=0", f"algo.loss_type={preset}", *filter_overrides(preset, on),
                                         f"train.max_minutes={args.minutes}", f"train.max_steps={args.steps}",
                                         "train.save_every=0", "eval.before=false", "eval.every=0", *args.overrides])
                shutil.rmtree(cfg.run_dir, ignore_errors=True)
                load_before = os.getloadavg()[0]
                start, cpu_start = time.time(), time.process_time()
                summary = train(cfg)
                lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
                results.append({
                    "preset": preset, "filter": on, "seed": seed, "steps": summary["steps"],
                    "accuracy_after": summary["accuracy_after"], "train_wall_seconds": summary["wall_seconds"],
                    "wall_seconds": time.time() - start, "cpu_seconds": time.process_time() - cpu_start,
                    "load_average_at_start": load_before,
                    "prompts_drawn_per_step": sum(m["sampling/draws"] for m in lines) / max(len(lines), 1),
                    "mean_kept_fraction": sum(m["update/kept_fraction"] for m in lines) / max(len(lines), 1),
                    "final_mean_length": lines[-1]["completion/mean_length"] if lines else None})
                print(json.dumps(results[-1]), flush=True)

    print(f"\n{'preset':<8} {'zero-var filter':<16} {'seed':>4} {'steps':>6} {'held-out':>9} {'minutes':>8} "
          f"{'cpu min':>8} {'draws/step':>10} {'kept':>6}")
    for r in results:
        print(f"{r['preset']:<8} {'on' if r['filter'] else 'off':<16} {r['seed']:>4} {r['steps']:>6} "
              f"{100 * r['accuracy_after']:>8.1f}% {r['wall_seconds'] / 60:>8.2f} {r['cpu_seconds'] / 60:>8.2f} "
              f"{r['prompts_drawn_per_step']:>10.2f} "
              f"{r['mean_kept_fraction']:>6.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                          f"{torch.get_num_threads()} threads", "torch": torch.__version__,
                               "minutes_per_run": args.minutes, "start_accuracy": "31.0% (builtin:tiny-sft, greedy)",
                               "overrides": args.overrides, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
