"""Command line: ``r1kit train|sft|eval [RECIPE] [a.b=c ...]``.

With no recipe, the built-in tiny world runs: the config defaults are its recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

USAGE = """examples:
  r1kit train                                   GRPO on the built-in tiny world (CPU, minutes)
  r1kit train recipes/tiny/grpo.yaml train.max_steps=50 name=short
  r1kit sft recipes/tiny/sft.yaml               rebuild the cold-start checkpoint
  r1kit eval runs/tiny-grpo/final --n 4         greedy and sampled pass@1 on the held-out split
"""


def _split_recipe(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a recipe path unless it is an a.b=c override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load(args: list[str], base=None):
    from r1kit.config import load_recipe

    recipe, overrides = _split_recipe(args)
    return load_recipe(recipe, overrides, base=base)


def cmd_train(args: list[str]) -> None:
    from r1kit.trainer import train

    train(_load(args))


def cmd_sft(args: list[str]) -> None:
    from r1kit.config import Config, ModelCfg
    from r1kit.sft import run_sft

    # without a recipe, SFT starts the tiny world from a fresh model (recipes/tiny/sft.yaml)
    summary = run_sft(_load(args, base=Config(name="tiny-sft", model=ModelCfg(name_or_path="builtin:tiny-init"))))
    print(json.dumps(summary, indent=2))


def cmd_eval(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="r1kit eval", description="Greedy and sampled pass@1 on held-out problems.")
    parser.add_argument("model", nargs="?", default=None, help="model dir or hub name (default: the recipe's model)")
    parser.add_argument("--recipe", default=None, help="recipe whose data section says what to evaluate on")
    parser.add_argument("--n", type=int, default=0, help="samples per problem for sampled pass@1 (0: greedy only)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--output", default=None, help="write per-problem results to this jsonl file")
    parser.add_argument("overrides", nargs="*", help="a.b=c recipe overrides")
    ns = parser.parse_intermixed_args(argv)

    from r1kit.config import load_recipe
    from r1kit.data.sources import load_rows
    from r1kit.evaluate import evaluate
    from r1kit.models import load_model, load_tokenizer, pick_device
    from r1kit.rollout.hf import HFEngine

    cfg = load_recipe(ns.recipe, ns.overrides)
    model_path = ns.model or cfg.model.name_or_path
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    model_cfg = dataclasses.replace(cfg.model, name_or_path=model_path)
    model = load_model(model_cfg, tokenizer, cfg.seed).to(pick_device(cfg.model.device))
    rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)
    result = evaluate(HFEngine(model, tokenizer, cfg.rollout.generation_batch_size), tokenizer, rows,
                      system_prompt=cfg.data.system_prompt, n_samples=ns.n, temperature=ns.temperature,
                      max_new_tokens=ns.max_new_tokens or cfg.eval.max_new_tokens, seed=cfg.seed)
    if ns.output:
        with open(ns.output, "w") as f:
            for item in result.items:
                f.write(json.dumps(item) + "\n")
    print(json.dumps({"model": model_path, "split": cfg.data.eval_split, **result.summary()}, indent=2))


COMMANDS = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: r1kit {train,sft,eval} [RECIPE] [a.b=c ...]\n\n" + USAGE)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from r1kit.config import ConfigError
    from r1kit.data.sources import DataError

    try:
        COMMANDS[argv[0]](argv[1:])
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as e:
        print(f"r1kit {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
