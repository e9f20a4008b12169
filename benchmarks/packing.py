"""Do the padding-free and shared-prompt training forwards pay? Seconds per update, padded vs packed vs
shared prompts, side by side.

    python benchmarks/packing.py                 # both configurations below
    python benchmarks/packing.py --only tiny

1. tiny: `r1kit train`'s defaults (builtin:tiny-sft, 8 prompts x 16 completions, <= 64 new tokens,
   micro-batches of 64), --steps steps, eval off; the `time/update` metric (the micro-batched forward,
   backward and AdamW step) is compared, median over steps 2.. (step 1 warms up). Both runs sample the same
   completions at step 1; later steps may differ in the last bits (the two layouts round differently).
2. smollm2-shaped: a random model with SmolLM2-135M's shape (576 wide, 30 layers, 9 heads / 3 KV heads,
   vocabulary 49,152, tied), one update (forward, backward, AdamW step) on a prepared batch of one 64-token
   prompt x 8 completions of 32-256 tokens (uniform, seeded): the issue's "G = 8 and >= 256 new tokens" with
   the spread of lengths a real step has, in micro-batches of 4 (16 completions in one micro-batch took
   7 GB of activations, and 8 were killed for memory on this shared machine). The layouts alternate update
   by update on one model; median of --repeats after a warm-up round.
Packed rows are as wide as the longest sequence (r1kit.forward.packed_layout); shared rows hold a group's
prompt once and its completions after it (r1kit.forward.shared_prefix_layout), attending through
r1kit.prompt_attention (these models use sdpa). fp32, one torch thread.
Writes benchmarks/results/packing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import r1kit.batch as batch_module
from shapes import SMOLLM2_135M

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ("padded", "packed", "shared")


def tiny(steps: int, layout: str) -> dict:
    from r1kit.recipe import load_recipe
    from r1kit.trainer import train

    batch_module.PACK_SEQUENCES = layout in ("packed", "shared")
    batch_module.SHARE_PROMPTS = layout == "shared"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_recipe(None, [f"output_dir={tmp}", "name=pack", f"train.max_steps={steps}", "eval.before=false",
                                 "eval.after=false", "eval.every=0", "log.progress=false", "log.console_every=0",
                                 "log.report=false", "train.save_every=0"])
        train(cfg)
        lines = [json.loads(x) for x in (Path(tmp) / "pack" / "metrics.jsonl").read_text().splitlines()]
    updates = [m["time/update"] for m in lines[1:]]
    return {"s_per_update": statistics.median(updates), "updates": updates,
            "mean_completion_length": statistics.mean(m["completion/mean_length"] for m in lines)}


def smollm2_batch(vocab: int):
    from r1kit.batch import RolloutBatch
    from r1kit.rollout.hf import left_pad

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, vocab, (64,), generator=g).tolist()
    prompt_ids, prompt_mask = left_pad([prompt] * 8, 0)
    lengths = torch.randint(32, 257, (8,), generator=g)
    completion_ids = torch.zeros(8, int(lengths.max()), dtype=torch.long)
    completion_mask = torch.zeros_like(completion_ids)
    for i, n in enumerate(lengths.tolist()):
        completion_ids[i, :n] = torch.randint(10, vocab, (n,), generator=g)
        completion_mask[i, :n] = 1
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(completion_ids.shape),
                        torch.linspace(-1, 1, 8), torch.zeros(8, dtype=torch.bool))


def smollm2(repeats: int) -> dict:
    """Both layouts on one model, alternating update by update (the machine's load drifts; this shares it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1kit.algo.loss import policy_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(pad_token_id=0, **SMOLLM2_135M)).train()
    batch = smollm2_batch(SMOLLM2_135M["vocab_size"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = {layout: [] for layout in LAYOUTS}
    for _ in range(repeats + 1):  # the first round is a warm-up
        for layout in times:
            start = time.perf_counter()
            for part in (batch.slice(0, 4), batch.slice(4, 8)):  # micro-batches of 4, as train.micro_batch_size=4
                logprobs, entropy = batch_module.completion_logprobs_and_entropy(model, part, 1.0,
                                                                                 layout=layout)
                loss, _ = policy_loss(logprobs, logprobs.detach(), part.advantages, part.completion_mask,
                                      entropy=entropy)
                (loss / 2).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[layout].append(time.perf_counter() - start)
    real = int(batch.prompt_mask.sum() + batch.completion_mask.sum())
    padded = batch.prompt_ids.numel() + batch.completion_ids.numel()
    return {layout: {"s_per_update": statistics.median(t[1:]), "times": t[1:], "real_tokens": real,
                     "padded_tokens": padded} for layout, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["tiny", "smollm2"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packing.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    if args.only in (None, "tiny"):
        results["tiny"] = {layout: tiny(args.steps, layout) for layout in LAYOUTS}
        print("tiny", results["tiny"], flush=True)
    if args.only in (None, "smollm2"):
        results["smollm2-shaped"] = smollm2(args.repeats)
        print("smollm2-shaped", results["smollm2-shaped"], flush=True)
    print(f"\n{'configuration':<16}" + "".join(f"{layout + ' s/update':>17}" for layout in LAYOUTS)
          + f"{'packed speed-up':>16}{'shared speed-up':>16}")
    for name, r in results.items():
        t = [r[layout]["s_per_update"] for layout in LAYOUTS]
        print(f"{name:<16}" + "".join(f"{x:>17.3f}" for x in t) + f"{t[0] / t[1]:>15.2f}x{t[0] / t[2]:>15.2f}x")
    out = Path(args.out)  # --only keeps the other configuration's entry of an existing file
    kept = json.loads(out.read_text())["results"] if args.only and out.is_file() else {}
    out.write_text(json.dumps({"results": {**kept, **results}, "threads": 1, "load_average_at_end": os.getloadavg(),
                               "machine": f"{os.cpu_count()} cores"}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
