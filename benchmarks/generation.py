"""Generation speed and weight-sync time per layout: HF engine vs vLLM (colocated, disk and direct sync) vs a
vLLM server (HTTP and shared-path pushes), on the tiny model and on a ~5M-parameter model.

    python benchmarks/generation.py                 # needs vLLM (pip install 'r1kit[vllm]'); CPU or GPU
    python benchmarks/generation.py --models tiny --repeats 2

The workload is one GRPO step of the tiny recipe: 8 prompts x 16 samples, up to 64 new tokens,
temperature 1. Tokens/s counts sampled tokens (EOS included) over the generate call, after one
warm-up call. Weight sync is update_weights() after the weights moved, median of --syncs calls.
Writes benchmarks/results/generation.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from r1kit.config import ModelCfg, VllmCfg
from r1kit.data.tasks import arith_split
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.models import build_tiny_model, load_model, load_tokenizer, resolve_model_path
from r1kit.rollout.hf import HFEngine
from r1kit.rollout.http import ServiceClient, ServiceError
from r1kit.types import SamplingParams

SAMPLING = SamplingParams(max_new_tokens=64, temperature=1.0, seed=0)
MID_ARCH = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=5, num_attention_heads=8,
                num_key_value_heads=8)  # ~5.3M parameters


def tiny_sft(tok) -> tuple[str, torch.nn.Module]:
    """The built-in tiny-sft checkpoint: (its directory, the model)."""
    path = resolve_model_path("builtin:tiny-sft")
    return path, load_model(ModelCfg(name_or_path=path), tok)


def models(which: list[str], tok) -> dict[str, tuple[str, torch.nn.Module]]:
    out = {}
    if "tiny" in which:
        out["tiny-sft (2.4M)"] = tiny_sft(tok)
    if "mid" in which:
        path = tempfile.mkdtemp(prefix="r1kit-bench-mid-")
        model = build_tiny_model(tok, seed=0, **MID_ARCH)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        n = sum(p.numel() for p in model.parameters())
        out[f"random {n / 1e6:.1f}M"] = (path, model)
    return out


def tokens_per_second(engine, prompts: list[list[int]], repeats: int) -> float:
    engine.generate(prompts, 16, SAMPLING)  # warm-up
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, 16, SamplingParams(**{**SAMPLING.__dict__, "seed": r + 1}))
        rates.append(sum(len(c.token_ids) for c in out) / (time.perf_counter() - start))
    return statistics.median(rates)


def sync_seconds(engine, model, syncs: int) -> float:
    times = []
    for _ in range(syncs):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-4)
        start = time.perf_counter()
        engine.update_weights(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Server:
    def __init__(self, model_path: str, name: str, extra: tuple = ()):  # extra: further vLLM flags
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tempfile.mktemp(prefix="r1kit-bench-serve-", suffix=".log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r1kit.cli", "serve-gen", model_path, "--served-model-name", name, "--port",
             str(self.port), "--kv-cache-gb", "1", "--", "--enforce-eager", "--dtype", "float32",
             "--max-model-len", "512", *extra], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        client = ServiceClient("generation server", self.url, timeout_s=5, retries=0)
        deadline = time.time() + 300
        while time.time() < deadline and self.proc.poll() is None:
            try:
                client.get("/r1kit/info")
                return
            except ServiceError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"serve-gen did not start; see {self.log.name}")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


def bench_model(label: str, path: str, model, tok, prompts, args) -> list[dict]:
    from r1kit.rollout.remote import RemoteEngine
    from r1kit.rollout.vllm import VLLMEngine

    rows = []

    def record(layout: str, engine, start_s: float, weight_sync: bool = True):
        rows.append({"model": label, "layout": layout, "startup_s": start_s,
                     "tokens_per_s": tokens_per_second(engine, prompts, args.repeats),
                     "weight_sync_s": sync_seconds(engine, model, args.syncs) if weight_sync else 0.0})
        print(json.dumps(rows[-1]), flush=True)

    record("hf (shares the weights)", HFEngine(model, tok), 0.0, weight_sync=False)
    for sync in ("disk", "direct"):
        start = time.perf_counter()
        engine = VLLMEngine(path, tok, VllmCfg(kv_cache_gb=1, max_model_len=512, weight_sync=sync), policy=model)
        engine.update_weights(model)
        record(f"vllm colocated, {sync} sync", engine, time.perf_counter() - start)
        engine.close()
    start = time.perf_counter()
    server = Server(path, label)
    try:
        started = time.perf_counter() - start
        client = ServiceClient("generation server", server.url, timeout_s=300, retries=0)
        for transfer in ("http", "path"):
            engine = RemoteEngine(client, label, tok, weight_transfer=transfer, shared_dir=tempfile.mkdtemp())
            engine.update_weights(model)
            record(f"vllm server, {transfer} push", engine, started)
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args()

    tok = load_tokenizer("builtin:tiny-sft")
    prompts = [encode_prompt(tok, build_messages(r["question"])) for r in arith_split("heldout", 8)]
    rows = []
    for label, (path, model) in models(args.models, tok).items():
        rows += bench_model(label, path, model, tok, prompts, args)

    print(f"\n{'model':<16} {'layout':<28} {'tokens/s':>9} {'sync ms':>8} {'start s':>8}")
    for r in rows:
        print(f"{r['model']:<16} {r['layout']:<28} {r['tokens_per_s']:>9.0f} {1000 * r['weight_sync_s']:>8.1f} "
              f"{r['startup_s']:>8.1f}")
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                               "vllm": vllm.__version__, "workload": "8 prompts x 16 samples, <= 64 new tokens, T=1",
                               "rows": rows}, indent=2))


if __name__ == "__main__":  # vLLM's worker processes re-import this file: keep the work behind the guard
    main()
