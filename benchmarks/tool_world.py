"""The tiny tool world: does GRPO learn to call the calculator? Accuracy and tool share before/after, completions.

    python benchmarks/tool_world.py                      # recipes/tiny/tool-grpo.yaml from builtin:tiny-tool-sft
    python benchmarks/tool_world.py --steps 20 train.learning_rate=1e-4

Writes benchmarks/results/tool_world.json: held-out greedy accuracy and the share of greedy answers that call
the tool, before and after, wall time, the eval history, and the greedy completions of the first held-out
problems before and after (their tool messages included). The target (docs/tools.md): +30 points of
held-out greedy accuracy within 10 minutes on a 2-core CPU, and the tool share rising.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from r1kit.recipe import load_recipe
from r1kit.trainer import train

SHOWN = 8  # held-out problems whose completions are recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/tiny/tool-grpo.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override train.max_steps")
    parser.add_argument("--out", default="benchmarks/results/tool_world.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    overrides = [f"seed={args.seed}", "name=bench-tool-world", "output_dir=runs/bench", "log.progress=false",
                 *([f"train.max_steps={args.steps}"] if args.steps else []), *args.overrides]
    cfg = load_recipe(args.recipe, overrides)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    before = completions_of(cfg, cfg.model.name_or_path)
    start = time.time()
    summary = train(cfg)
    wall = time.time() - start
    after = completions_of(cfg, str(cfg.run_dir / "final"))
    result = {key: summary[key] for key in ("accuracy_before", "accuracy_after", "tool_share_before",
                                            "tool_share_after", "steps", "eval_history")}
    result |= {"wall_seconds": wall, "train_wall_seconds": summary["wall_seconds"]}
    print(f"\n{'':>12} {'before':>8} {'after':>8}")
    print(f"{'accuracy':>12} {100 * result['accuracy_before']:>7.1f}% {100 * result['accuracy_after']:>7.1f}%")
    print(f"{'tool share':>12} {100 * result['tool_share_before']:>7.1f}% {100 * result['tool_share_after']:>7.1f}%")
    print(f"{result['steps']} steps, {wall / 60:.2f} minutes (training {summary['wall_seconds'] / 60:.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "recipe": args.recipe,
        "overrides": args.overrides, **result,
        "completions_before": before, "completions_after": after}, indent=2))
    print(f"wrote {out}")


def completions_of(cfg, model_path: str) -> list[dict]:
    """Greedy multi-turn completions of the first SHOWN held-out problems by the model at `model_path`."""
    import dataclasses

    from r1kit.data.sources import load_rows
    from r1kit.evaluate import evaluate
    from r1kit.run import _load_policy, make_engine, prompt_tools

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=model_path))
    tokenizer, model = _load_policy(cfg)
    rows = load_rows(cfg.data, cfg.data.eval_split, size=SHOWN)
    engine = make_engine(cfg, model, tokenizer)
    d = cfg.data
    result = evaluate(engine, tokenizer, rows, system_prompt=d.system_prompt, instruction=d.instruction,
                      prompt_format=d.prompt_format, max_new_tokens=cfg.eval.max_new_tokens, tools=prompt_tools(cfg))
    return [{k: item[k] for k in ("question", "answer", "completion", "correct")} for item in result.items]


if __name__ == "__main__":
    main()
