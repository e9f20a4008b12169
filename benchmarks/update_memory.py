"""Peak memory and time of one GRPO update with Qwen2.5-0.5B's vocabulary (151,936) and 1k-token completions.

    python benchmarks/update_memory.py                      # 2 completions x 1024 tokens, 64-token prompt
    python benchmarks/update_memory.py --completions 4      # twice the rows: the full-logits row needs twice the RAM

The model is a random qwen2 with Qwen2.5-0.5B's vocabulary and tied embeddings but a small body
(--hidden 128, --layers 2), built from its config: the logits are (rows, positions, vocabulary) whatever
the body's width, so a small body isolates what the vocabulary costs. The batch is one prompt of random
ids repeated for every completion (left-padded layout as the trainer builds it) and completions of exactly
--length tokens, with non-zero advantages; beta = 0, one update per batch, fp32, one micro-batch.

What one "update" is, for each row of the table (each in a fresh process, same model, same batch):
  r1kit full logits   r1kit before this change: the (N, C+1, V) logits of the model's head, row-wise
                      log-softmax and entropy (r1kit.batch.full_logits_logprobs_and_entropy), then
                      r1kit's policy loss, backward, grad-norm clip, AdamW step.
  r1kit chunked       the same with r1kit.batch.completion_logprobs_and_entropy: hidden states through
                      the head in chunks, logits recomputed per chunk in backward (r1kit.algo.head).
  checkpoint/chunk    the alternative design: torch.utils.checkpoint around each chunk's logits, log-softmax
                      and entropy (written here, for this comparison only), same loss and step.
  TRL 1.16            trl.GRPOTrainer.compute_loss on the same prepared batch (prompt_ids, prompt_mask,
                      completion_ids, completion_mask, advantages; loss_type "grpo", beta 0): TRL's fused
                      chunked LM head (add_fused_lm_head), its loss, then backward, clip and the same AdamW
                      step. Generation is not part of any row (1k tokens from TRL's HF generate on a CPU
                      would take too long, and no row generates).
Memory: the process's resident-set high-water mark (VmHWM) over the measured updates, after one warm-up
update (which allocates AdamW's state), reset just before them through /proc/self/clear_refs; reported as
the peak above the resident set right before the updates ("update peak") and as the process's absolute
peak. On a CPU torch allocates from the C heap (large tensors are mmap'd and returned to the system when
freed), so the resident high-water mark is the most memory the update held at once; tracemalloc does not
see torch's allocations. Time: median wall seconds per update. Writes benchmarks/results/update_memory.json.
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

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["r1kit full logits", "r1kit chunked", "checkpoint/chunk", "TRL 1.16"]


def build_model(directory: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1kit.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = Qwen2Config(vocab_size=151936, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=1, tie_word_embeddings=True,
                         max_position_embeddings=4096, rope_theta=1e6, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def make_batch(vocab: int, completions: int, length: int, prompt: int):
    import torch

    from r1kit.batch import RolloutBatch

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(10, vocab, (1, prompt), generator=g).repeat(completions, 1)  # (N, P)
    completion_ids = torch.randint(10, vocab, (completions, length), generator=g)  # (N, C)
    advantages = torch.linspace(-1.0, 1.0, completions)
    return RolloutBatch(prompt_ids, torch.ones_like(prompt_ids), completion_ids, torch.ones_like(completion_ids),
                        torch.zeros(completions, length), advantages, torch.zeros(completions, dtype=torch.bool))


def memory_kib() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def checkpointed_logprobs_and_entropy(model, batch, temperature: float, chunk_rows: int):
    """The design not chosen: hidden states from the model body, then torch.utils.checkpoint around each
    chunk's logits / log-softmax / entropy (the chunk's graph is rebuilt and kept during its backward)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    C = batch.completion_ids.shape[1]
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids).last_hidden_state[:, -C - 1:-1]  # (N, C, H)
    flat, targets = hidden.reshape(-1, hidden.shape[-1]), batch.completion_ids.reshape(-1)
    weight = model.get_output_embeddings().weight

    def scores(h, w, t):
        z = (h @ w.t()).float() / temperature
        logp = torch.log_softmax(z, dim=-1)
        return logp.gather(-1, t[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1).detach()

    parts = [checkpoint(scores, flat[s:s + chunk_rows], weight, targets[s:s + chunk_rows], use_reentrant=False)
             for s in range(0, flat.shape[0], chunk_rows)]
    return (torch.cat([p[0] for p in parts]).view(batch.completion_ids.shape),
            torch.cat([p[1] for p in parts]).view(batch.completion_ids.shape))


def r1kit_step(variant: str, model, batch, optimizer):
    import torch

    from r1kit.algo.head import default_chunk_rows
    from r1kit.algo.loss import policy_loss
    from r1kit.batch import completion_logprobs_and_entropy, full_logits_logprobs_and_entropy

    if variant == "r1kit full logits":
        logprobs, entropy = full_logits_logprobs_and_entropy(model, batch, 1.0)
    elif variant == "r1kit chunked":
        logprobs, entropy = completion_logprobs_and_entropy(model, batch, 1.0, layout="padded")
    else:
        logprobs, entropy = checkpointed_logprobs_and_entropy(model, batch, 1.0, default_chunk_rows(151936))
    loss, _ = policy_loss(logprobs, logprobs.detach(), batch.advantages, batch.completion_mask, entropy=entropy)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trl_trainer(model, model_dir: str, completions: int, length: int, workdir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1kit.models import load_tokenizer

    args = GRPOConfig(output_dir=workdir, per_device_train_batch_size=completions, num_generations=completions,
                      max_completion_length=length, beta=0.0, loss_type="grpo", report_to=[], use_cpu=True,
                      bf16=False, fp16=False, logging_steps=1, save_strategy="no", learning_rate=1e-6)
    data = Dataset.from_list([{"prompt": "1+1="}] * completions)
    return GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                       train_dataset=data, processing_class=load_tokenizer(model_dir))


def child(args) -> None:
    """One variant in this process: warm-up update, reset the high-water mark, measured updates, one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.train()
    batch = make_batch(model.config.vocab_size, args.completions, args.length, args.prompt)
    if args.variant == "TRL 1.16":
        trainer = trl_trainer(model, args.model_dir, args.completions, args.length, args.workdir)
        model = trainer.model
        trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before each step (no accumulation)
        inputs = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask, "completion_ids": batch.completion_ids,
                  "completion_mask": batch.completion_mask, "advantages": batch.advantages,
                  "num_items_in_batch": batch.completion_mask.sum()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def update():
        if args.variant == "TRL 1.16":
            trainer.compute_loss(model, inputs).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            r1kit_step(args.variant, model, batch, optimizer)

    update()  # warm-up: AdamW's state exists from here on
    before = memory_kib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current resident set
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    peak = memory_kib()["VmHWM"]
    print(json.dumps({"variant": args.variant, "s_per_update": statistics.median(times), "times": times,
                      "rss_before_mib": before / 1024, "peak_mib": peak / 1024, "update_peak_mib": (peak - before) / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--completions", type=int, default=2)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=VARIANTS)
    p.add_argument("--variant"), p.add_argument("--model-dir"), p.add_argument("--workdir")  # the child's
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "update_memory.json"))
    args = p.parse_args()
    if args.variant:
        return child(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        params = build_model(Path(tmp) / "model", args.hidden, args.layers)
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--variant", variant, "--model-dir", str(Path(tmp) / "model"),
                   "--workdir", str(Path(tmp) / "trl"), *(f"--{k}={getattr(args, k)}" for k in
                                                          ("completions", "length", "prompt", "repeats"))]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
            if done.returncode != 0:
                rows.append({"variant": variant, "error": done.stderr.strip().splitlines()[-1][:300]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    report(args, params, rows)


def report(args, params: int, rows: list[dict]) -> None:
    logits_mib = args.completions * (args.length + 1) * 151936 * 4 / 2**20
    print(f"\none GRPO update: {args.completions} completions x {args.length} tokens (+{args.prompt}-token prompt), "
          f"vocabulary 151,936, {params / 1e6:.1f}M parameters, fp32, 1 thread; one (N, C+1, V) fp32 logits "
          f"tensor = {logits_mib:,.0f} MiB")
    print(f"{'variant':<20}{'update peak MiB':>17}{'process peak MiB':>18}{'s/update':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<20}  failed: {r['error']}")
        else:
            print(f"{r['variant']:<20}{r['update_peak_mib']:>17,.0f}{r['peak_mib']:>18,.0f}{r['s_per_update']:>10.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "config": {k: getattr(args, k) for k in ("completions", "length", "prompt", "hidden", "layers", "repeats")},
        "parameters": params, "vocab_size": 151936, "logits_mib": logits_mib, "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other sessions",
        "load_average_at_end": os.getloadavg()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
