"""Does the default recipe learn? Run it over several seeds; print and write accuracy before/after and wall time.

    python benchmarks/learning.py                      # seeds 0 1 2, the default recipe
    python benchmarks/learning.py --seeds 0 --steps 60 train.learning_rate=1e-4

Writes benchmarks/results/learning.json (one entry per seed plus the mean). The target (issue:
r1kit core) is held-out greedy accuracy +30 points over the SFT start within 10 minutes on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from r1kit.recipe import load_recipe
from r1kit.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=None, help="recipe (default: the built-in tiny world)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--out", default="benchmarks/results/learning.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    results = []
    for seed in args.seeds:
        name = f"bench-learning-seed{seed}"
        overrides = [f"seed={seed}", f"name={name}", "output_dir=runs/bench", "log.progress=false",
                     *([f"train.max_steps={args.steps}"] if args.steps else []), *args.overrides]
        cfg = load_recipe(args.recipe, overrides)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        start = time.time()
        summary = train(cfg)
        results.append({"seed": seed, "accuracy_before": summary["accuracy_before"],
                        "accuracy_after": summary["accuracy_after"], "steps": summary["steps"],
                        "wall_seconds": time.time() - start, "train_wall_seconds": summary["wall_seconds"],
                        "eval_history": summary["eval_history"]})

    mean = {k: sum(r[k] for r in results) / len(results)
            for k in ("accuracy_before", "accuracy_after", "wall_seconds")}
    print(f"\n{'seed':>4} {'before':>8} {'after':>8} {'gain':>8} {'steps':>6} {'minutes':>8}")
    for r in results + [{"seed": "mean", "steps": results[0]["steps"], **mean}]:
        gain = 100 * (r["accuracy_after"] - r["accuracy_before"])
        print(f"{r['seed']:>4} {100 * r['accuracy_before']:>7.1f}% {100 * r['accuracy_after']:>7.1f}% "
              f"{gain:>+7.1f} {r['steps']:>6} {r['wall_seconds'] / 60:>8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{platform.processor() or platform.machine()}, "
                                          f"{torch.get_num_threads()} threads", "torch": torch.__version__,
                               "overrides": args.overrides, "runs": results, "mean": mean}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
