"""What one vLLM weight sync costs, by phase: LoRA merge, export, unmerge, then the load into vLLM (in-process
engine and `r1kit serve-gen`), with full fine-tuning's sync of the same model beside it.

    python benchmarks/weight_sync.py                      # needs vLLM (pip install 'r1kit[vllm]'); CPU or GPU
    python benchmarks/weight_sync.py --models tiny --syncs 3

Models: the built-in tiny model (2.4M parameters) and a random model with SmolLM2-135M-Instruct's shape
(30 layers, 576 wide, 9 heads / 3 KV heads, 49,152 tokens, tied head), fp32. LoRA: r=16 on every linear layer
("all-linear"). Phases, each the median of --syncs calls after the weights moved:

- merge / unmerge: peft's merge_adapter() and unmerge_adapter() alone;
- export: r1kit.rollout.weights.export_state_dict (LoRA: merge, copy under the base names, unmerge; full: a view);
- in-process sync: VLLMEngine.update_weights (export, safetensors file on tmpfs, vLLM reload, prefix-cache reset);
- server sync: RemoteEngine.update_weights over HTTP on loopback (export, serialise, POST in parts of at most
  services.weight_bucket_mb, reload, reset).

The full model's export is a view (no copy), so its sync time is the load alone; a LoRA sync is its export
plus that same load (the pushed tensors are the same size).

Writes benchmarks/results/weight_sync.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import Server, tiny_sft  # noqa: E402  (serve-gen in its own process group)
from shapes import SMOLLM2_135M  # noqa: E402

from r1kit.config import LoraCfg, VllmCfg  # noqa: E402
from r1kit.models import apply_lora, build_tiny_tokenizer  # noqa: E402
from r1kit.rollout.http import ServiceClient  # noqa: E402
from r1kit.rollout.weights import export_state_dict  # noqa: E402


def build_models(which: list[str], tok) -> dict[str, tuple[str, torch.nn.Module]]:
    out = {}
    if "tiny" in which:
        out["tiny-sft (2.4M)"] = tiny_sft(tok)
    if "smollm2" in which:
        from transformers import LlamaConfig, LlamaForCausalLM

        path = tempfile.mkdtemp(prefix="r1kit-bench-smollm2-shape-")
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                             bos_token_id=None, **SMOLLM2_135M))
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[f"random SmolLM2-135M shape ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M)"] = (path, model)
    return out


def nudge(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 1e-4)


def median_seconds(fn, model, syncs: int) -> float:
    times = []
    for _ in range(syncs):
        nudge(model)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lora_of(model):
    import copy

    lora = apply_lora(copy.deepcopy(model), LoraCfg(enabled=True, r=16, alpha=32, target_modules="all-linear"))
    with torch.no_grad():  # B starts at zero; give the adapters weight so the merge does real work
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    return lora


def phases(label: str, path: str, model, tok, syncs: int) -> list[dict]:
    from r1kit.rollout.remote import RemoteEngine
    from r1kit.rollout.vllm import VLLMEngine

    variants = {"full": model, "LoRA r16 all-linear": lora_of(model)}
    rows = {}
    for kind, policy in variants.items():
        state = export_state_dict(policy)
        row = {"model": label, "weights": kind, "push_mb": sum(t.numel() * t.element_size() for t in state.values()) / 2**20,
               "trainable_m": sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6,
               "export_s": median_seconds(lambda: export_state_dict(policy), policy, syncs)}
        if kind != "full":
            row["merge_s"], row["unmerge_s"] = merge_unmerge_seconds(policy, syncs)
        rows[kind] = row
    engine = VLLMEngine(path, tok, VllmCfg(kv_cache_gb=1, max_model_len=512, weight_sync="disk"), policy=model)
    try:
        for kind, policy in variants.items():
            rows[kind]["in_process_sync_s"] = median_seconds(lambda: engine.update_weights(policy), policy, syncs)
    finally:
        engine.close()
    server = Server(path, label)
    try:
        client = ServiceClient("generation server", server.url, timeout_s=600, retries=0)
        remote = RemoteEngine(client, label, tok)
        for kind, policy in variants.items():
            before = client.get("/r1kit/info")
            rows[kind]["server_sync_s"] = median_seconds(lambda: remote.update_weights(policy), policy, syncs)
            after = client.get("/r1kit/info")
            rows[kind]["server_parts_per_sync"] = (after["parts_applied"] - before["parts_applied"]) / syncs
    finally:
        server.stop()
    for row in rows.values():
        print(json.dumps(row), flush=True)
    return list(rows.values())


def merge_unmerge_seconds(policy, syncs: int) -> tuple[float, float]:
    """peft's merge_adapter() and unmerge_adapter(), each timed alone (medians)."""
    merges, unmerges = [], []
    for _ in range(syncs):
        nudge(policy)
        start = time.perf_counter()
        policy.merge_adapter()
        merged = time.perf_counter()
        policy.unmerge_adapter()
        merges.append(merged - start)
        unmerges.append(time.perf_counter() - merged)
    return statistics.median(merges), statistics.median(unmerges)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/weight_sync.json")
    args = parser.parse_args()
    tok = build_tiny_tokenizer()
    rows = []
    for label, (path, model) in build_models(args.models, tok).items():
        rows += phases(label, path, model, tok, args.syncs)

    def ms(row, key):
        return f"{1000 * row[key]:.0f}" if key in row else "-"

    print(f"\n{'model':<36} {'weights':<20} {'MB':>6} {'merge':>6} {'unmerge':>7} {'export':>6} {'in-process sync':>15} "
          f"{'server sync':>11} {'parts':>5}   (times in ms)")
    for r in rows:
        print(f"{r['model']:<36} {r['weights']:<20} {r['push_mb']:>6.0f} {ms(r, 'merge_s'):>6} {ms(r, 'unmerge_s'):>7} "
              f"{ms(r, 'export_s'):>6} {ms(r, 'in_process_sync_s'):>15} {ms(r, 'server_sync_s'):>11} "
              f"{r['server_parts_per_sync']:>5.0f}")
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "vllm": vllm.__version__, "dtype": "float32",
                               "syncs": args.syncs, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":  # vLLM's worker processes re-import this file: keep the work behind the guard
    main()
