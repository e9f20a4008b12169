"""Peak memory per process of a GRPO step under each strategy, on a model with Qwen2.5-0.5B's shape.

    python benchmarks/memory.py                 # all layouts, 6 of Qwen2.5-0.5B's 24 layers, fp32
    python benchmarks/memory.py --layers 24     # the full shape (about 16 GB of RAM for the 2-process runs)

A random model with Qwen2.5-0.5B's width, heads and vocabulary (151,936, tied embeddings) is built from
its config (no download) with the tiny character tokenizer (ids it cannot decode are dropped), then
each layout trains 2 GRPO steps of 4 prompts x 2 completions x 16 tokens, launched as the README says.
The number reported is `memory/max_process_gb` from the run's metrics.jsonl: the largest peak of any
process (the resident set on a CPU, CUDA allocations on a GPU). Writes benchmarks/results/memory.json.
On a CPU the resident set also holds what "offload" moves off a GPU, so that row saves nothing here.
TRL is not run here: on a CPU, Accelerate enables neither DeepSpeed nor FSDP, so TRL has no ZeRO
layout to compare with; r1kit sets those strategies up itself (r1kit/distributed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6)
LAYOUTS = [  # (name, accelerate config or None for one plain process, processes, LoRA)
    ("full, 1 process", None, 1, False),
    ("LoRA r16, 1 process", None, 1, True),
    ("DDP", "ddp", 2, False),
    ("ZeRO-2", "zero2", 2, False),
    ("ZeRO-2 + optimizer offload", "zero2-offload", 2, False),
    ("ZeRO-3", "zero3", 2, False),
    ("FSDP2", "fsdp2", 2, False),
]


def build_model(directory: Path, layers: int, dtype: str) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1kit.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = Qwen2Config(num_hidden_layers=layers, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=None, **QWEN_05B)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def run_layout(name: str, accelerate_config: str | None, processes: int, lora: bool, model_dir: Path,
               out: Path, dtype: str) -> dict:
    run_name = name.replace(" ", "_").replace(",", "").replace("+", "plus")
    overrides = [f"model.name_or_path={model_dir}", f"model.dtype={dtype}", f"output_dir={out}", f"name={run_name}",
                 "train.batch_size=8",
                 "rollout.num_generations=2", "train.micro_batch_size=2", "rollout.max_completion_length=16",
                 "train.max_steps=2", "train.save_every=0", "eval.before=false", "eval.after=false", "eval.every=0",
                 "log.progress=false", "log.report=false", "rewards=[{name: unique_chars}]",
                 # a random model's groups often score alike; a tiny entropy bonus keeps every row in the backward
                 # (one process would otherwise skip zero-advantage rows and measure no backward at all)
                 "algo.entropy_coef=1e-6"]
    if lora:
        overrides += ["model.lora.enabled=true", "model.lora.r=16"]
    if accelerate_config is None:
        cmd = [sys.executable, "-m", "r1kit", "train", *overrides]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / f"{accelerate_config}.yaml"), "--num_processes", str(processes),
               "--mixed_precision", "bf16" if dtype == "bfloat16" else "no", "-m", "r1kit", "train", *overrides]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        return {"layout": name, "error": done.stderr.strip().splitlines()[-1][:300]}
    run_dir = out / run_name
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return {"layout": name, "processes": processes, "peak_gb_per_process": round(last["memory/max_process_gb"], 2),
            "step_seconds": round(last["time/step"], 1), "wall_seconds": round(time.time() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6, help="decoder layers (Qwen2.5-0.5B has 24)")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"],
                        help="float32: every layout keeps the same copies (with bf16, DeepSpeed adds fp32 masters)")
    parser.add_argument("--only", nargs="*", default=None, help="layout names to run (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        params = build_model(model_dir, args.layers, args.dtype)
        rows = [run_layout(*layout, model_dir, Path(tmp) / "runs", args.dtype) for layout in LAYOUTS
                if not args.only or layout[0] in args.only]
    print(f"\nQwen2.5-0.5B shape, {args.layers} layers, {params / 1e6:.0f}M parameters, {args.dtype}")
    print(f"{'layout':<28} {'processes':>9} {'peak GB/process':>16} {'s/step':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['layout']:<28} error: {r['error']}")
        else:
            print(f"{r['layout']:<28} {r['processes']:>9} {r['peak_gb_per_process']:>16} {r['step_seconds']:>7}")
    result = {"model": f"random Qwen2.5-0.5B shape, {args.layers} layers", "parameters": params,
              "dtype": args.dtype, "machine": f"{os.cpu_count()} CPU cores", "rows": rows}
    path = ROOT / "benchmarks" / "results" / "memory.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
