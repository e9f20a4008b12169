"""Peak memory per process of a GRPO step under each strategy, on a model with Qwen2.5-0.5B's shape.

    python benchmarks/memory.py                 # all layouts, 6 of Qwen2.5-0.5B's 24 layers, fp32
    python benchmarks/memory.py --layers 24     # the full shape (about 16 GB of RAM for the 2-process runs)
    python benchmarks/memory.py --layers 2 --vocab 32768 --out benchmarks/results/memory_vs_trl.json  # quick, with TRL

A random model with Qwen2.5-0.5B's width, heads and vocabulary (151,936, tied embeddings) is built from
its config (no download) with the tiny character tokenizer (ids it cannot decode are dropped), then
each layout trains 2 GRPO steps of 4 prompts x 2 completions x 16 tokens, launched as the README says.
The number reported is `memory/max_process_gb` from the run's metrics.jsonl: the largest peak of any
process (the resident set on a CPU, CUDA allocations on a GPU). Writes benchmarks/results/memory.json.
On a CPU the resident set also holds what "offload" moves off a GPU, so that row saves nothing here.

TRL 1.16's GRPOTrainer runs beside it (--trl, the default) on the same model, data size, completion length,
micro-batch, optimizer steps and precision (fp32, gradient checkpointing off on both sides, beta 0, no vLLM),
launched the same way with the same Accelerate files: one process (full and LoRA r16), DDP, ZeRO-2 and
ZeRO-3. Its number is the largest peak resident set of its processes, read the same way (VmHWM at the
end, r1kit.distributed.peak_resident_gb); each row records the layout Accelerate built for TRL (measured
here: DeepSpeed for the ZeRO files, MULTI_CPU for DDP), and a row whose ZeRO launch did not get DeepSpeed
says so.
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
TRL_LAYOUTS = [  # the same names: the rows sit side by side
    ("full, 1 process", None, 1, False),
    ("LoRA r16, 1 process", None, 1, True),
    ("DDP", "ddp", 2, False),
    ("ZeRO-2", "zero2", 2, False),
    ("ZeRO-3", "zero3", 2, False),
]
LAYOUTS = [  # (name, accelerate config or None for one plain process, processes, LoRA)
    ("full, 1 process", None, 1, False),
    ("LoRA r16, 1 process", None, 1, True),
    ("DDP", "ddp", 2, False),
    ("ZeRO-2", "zero2", 2, False),
    ("ZeRO-2 + optimizer offload", "zero2-offload", 2, False),
    ("ZeRO-3", "zero3", 2, False),
    ("FSDP2", "fsdp2", 2, False),
]


def build_model(directory: Path, layers: int, dtype: str, vocab: int = QWEN_05B["vocab_size"], **shape) -> int:
    """Qwen2.5-0.5B's shape with `layers` layers (and any of QWEN_05B's entries replaced by `shape`), random."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1kit.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = Qwen2Config(num_hidden_layers=layers, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=None, **{**QWEN_05B, "vocab_size": vocab, **shape})
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


def run_trl_layout(name: str, accelerate_config: str | None, processes: int, lora: bool, model_dir: Path,
                   out: Path) -> dict:
    """TRL's GRPOTrainer on the same model and workload, launched like the r1kit row (this file's --trl-worker)."""
    work = out / ("trl-" + name.replace(" ", "_").replace(",", "").replace("+", "plus"))
    work.mkdir(parents=True)
    worker = [str(Path(__file__).resolve()), "--trl-worker", str(model_dir), str(work), str(processes),
              *(["--lora"] if lora else [])]
    if accelerate_config is None:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / f"{accelerate_config}.yaml"), "--num_processes", str(processes),
               *worker]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    ranks = [json.loads(f.read_text()) for f in sorted(work.glob("rank-*.json"))]
    if done.returncode != 0 or not ranks:
        lines = [x for x in done.stderr.strip().splitlines() if "Error" in x or "error" in x] or \
            done.stderr.strip().splitlines() or ["no output"]
        return {"layout": name, "error": lines[-1][:300]}
    built = sorted({r["distributed_type"] for r in ranks})
    row = {"layout": name, "processes": len(ranks), "peak_gb_per_process": round(max(r["peak_gb"] for r in ranks), 2),
           "step_seconds": round(max(r["step_seconds"] for r in ranks), 1), "wall_seconds": round(time.time() - start),
           "accelerate_built": ", ".join(built)}
    if accelerate_config in ("zero2", "zero3") and built != ["DistributedType.DEEPSPEED"]:
        row["note"] = f"Accelerate on a CPU ran this as {row['accelerate_built']}, not DeepSpeed"
    return row


def trl_worker(model_dir: str, work: str, processes: int, lora: bool) -> None:
    """One TRL process: 2 GRPO steps of 4 prompts x 2 completions x 16 tokens, micro-batches of 2, fp32."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.data.tasks import arith_split
    from r1kit.distributed import peak_resident_gb

    def unique_chars(completions, **_):  # r1kit's unique_chars reward
        return [float(len(set(c))) for c in completions]

    config = GRPOConfig(output_dir=work, per_device_train_batch_size=2, gradient_accumulation_steps=4 // processes,
                        num_generations=2, max_completion_length=16, max_steps=2, use_cpu=True, report_to="none",
                        save_strategy="no", logging_steps=1, gradient_checkpointing=False, bf16=False, seed=0)
    peft = None
    if lora:
        from peft import LoraConfig

        peft = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    data = Dataset.from_dict({"prompt": [r["question"] for r in arith_split("train", 64)]})
    trainer = GRPOTrainer(model=model_dir, reward_funcs=unique_chars, args=config, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft)
    start = time.perf_counter()
    trainer.train()
    acc = trainer.accelerator
    result = {"distributed_type": str(acc.distributed_type), "step_seconds": (time.perf_counter() - start) / 2,
              "peak_gb": peak_resident_gb()}  # as r1kit's memory/max_process_gb: VmHWM, not the launcher's mark
    (Path(work) / f"rank-{acc.process_index}.json").write_text(json.dumps(result))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--trl-worker":  # one TRL process (run_trl_layout launches it)
        model_dir, work, processes = sys.argv[2], sys.argv[3], int(sys.argv[4])
        return trl_worker(model_dir, work, processes, lora="--lora" in sys.argv[5:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6, help="decoder layers (Qwen2.5-0.5B has 24)")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"],
                        help="float32: every layout keeps the same copies (with bf16, DeepSpeed adds fp32 masters)")
    parser.add_argument("--vocab", type=int, default=QWEN_05B["vocab_size"],
                        help="vocabulary size (a smaller one for a quick run on a busy machine)")
    parser.add_argument("--only", nargs="*", default=None, help="layout names to run (default: all)")
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                        help="run TRL 1.16 beside r1kit (fp32 only)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    args = parser.parse_args()
    chosen = [layout for layout in LAYOUTS if not args.only or layout[0] in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        params = build_model(model_dir, args.layers, args.dtype, args.vocab)
        rows = [run_layout(*layout, model_dir, Path(tmp) / "runs", args.dtype) for layout in chosen]
        trl_rows = [run_trl_layout(*layout, model_dir, Path(tmp) / "runs") for layout in TRL_LAYOUTS
                    if args.trl and args.dtype == "float32" and (not args.only or layout[0] in args.only)]
    trl = {r["layout"]: r for r in trl_rows}

    shape = f"Qwen2.5-0.5B shape, {args.layers} layers, vocabulary {args.vocab}"
    print(f"\n{shape}, {params / 1e6:.0f}M parameters, {args.dtype}")
    print(f"{'layout':<28} {'processes':>9} {'r1kit GB/process':>17} {'s/step':>7} {'TRL GB/process':>15} {'s/step':>7}")
    for r in rows:
        t = trl.get(r["layout"])
        if "error" in r:
            print(f"{r['layout']:<28} r1kit error: {r['error']}")
            continue
        t_gb = "-" if t is None else ("error" if "error" in t else t["peak_gb_per_process"])
        t_s = "-" if t is None or "error" in t else t["step_seconds"]
        print(f"{r['layout']:<28} {r['processes']:>9} {r['peak_gb_per_process']:>17} {r['step_seconds']:>7} "
              f"{t_gb:>15} {t_s:>7}")
    for t in trl_rows:
        if "error" in t or "note" in t:
            print(f"TRL {t['layout']}: {t.get('error') or t['note']}")
    result = {"model": f"random {shape}", "parameters": params,
              "dtype": args.dtype, "machine": f"{os.cpu_count()} CPU cores", "rows": rows, "trl_rows": trl_rows}
    path = Path(args.out)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
