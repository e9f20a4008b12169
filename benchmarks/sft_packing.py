"""SFT throughput: padded vs packed batches, r1kit and TRL's SFTTrainer side by side, on the same data.

    python benchmarks/sft_packing.py                  # 96 conversations, 1 epoch-equivalent each way
    python benchmarks/sft_packing.py --samples 256 --max-seq-length 2048

Data: Bespoke-Stratos-layout conversations (system + conversations [{from, value}]) whose assistant traces
have lognormally spread lengths (a few dozen to ~1,500 characters, as distilled traces vary), written to a
jsonl. Model: a random Llama (hidden 256, 4 layers) with the tiny character tokenizer, fp32, on the CPU.
r1kit reads the file directly (sft.format auto -> sharegpt); TRL gets the same conversations as
conversational prompt/completion rows (completion-only loss). Each setup trains on about as many samples
as the file holds. Reported: real (non-pad) tokens per second of training and the share of pad cells.
r1kit's numbers come from its metrics.jsonl (time/step); TRL's from train_runtime and the tokens of one epoch.
Writes benchmarks/results/sft_packing.json. CPU timings on a shared machine: compare within one run only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_data(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        steps = max(1, int(math.exp(rng.gauss(2.3, 0.9))))  # 1 to ~100 lines of working
        trace = "\n".join(f"step {k}: {a}+{k}={a + k}" for k in range(steps))
        rows.append({"system": "Think step by step." if i % 2 else "", "conversations": [
            {"from": "user", "value": f"What is {a}+{b}?"},
            {"from": "assistant", "value": f"<think>{trace}</think>{a + b}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_model(directory: Path) -> None:
    from r1kit.models import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, seed=0, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)


def run_r1kit(name: str, model_dir: Path, data: Path, out: Path, batch: int, steps: int, packing: bool,
              max_len: int) -> dict:
    from r1kit.recipe import load_recipe
    from r1kit.sft import run_sft

    overrides = [f"model.name_or_path={model_dir}", f"output_dir={out}", f"name={name}", f"sft.source={data}",
                 f"sft.steps={steps}", f"sft.batch_size={batch}", "sft.warmup_steps=0", "sft.eval_every=0",
                 "sft.save_every=0", "sft.learning_rate=1e-3", "eval.before=false", "eval.after=false",
                 "log.progress=false", f"sft.max_seq_length={max_len}", "sft.overlong=truncate"]
    if packing:
        overrides += ["sft.packing=true", "sft.micro_batch_size=4"]
    else:
        overrides += ["sft.micro_batch_size=4"]
    run_sft(load_recipe(None, overrides))
    lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    tokens, seconds = sum(m["train/tokens"] for m in lines), sum(m["time/step"] for m in lines)
    return {"setup": name, "tokens_per_second": tokens / seconds, "padding_share":
            sum(m["train/padding_share"] for m in lines) / len(lines), "final_loss": lines[-1]["train/loss"],
            "train_seconds": seconds}


def run_trl(name: str, model_dir: Path, data: Path, out: Path, batch: int, packing: bool, max_len: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from r1kit.data.chat import to_messages

    rows = []
    for i, line in enumerate(data.read_text().splitlines()):
        messages = to_messages(json.loads(line), "auto", f"{data} row {i}")
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(out / name), per_device_train_batch_size=batch if not packing else 4,
                     num_train_epochs=1, learning_rate=1e-3, max_length=max_len, packing=packing, use_cpu=True,
                     report_to=[], save_strategy="no", logging_steps=1, lr_scheduler_type="constant",
                     dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    dataset = trainer.train_dataset
    tokens = sum(sum(1 for _ in ids) for ids in dataset["input_ids"])
    return {"setup": name, "tokens_per_second": tokens / result.metrics["train_runtime"],
            # packed: TRL concatenates a batch into one padding-free row; padded batches: not measured here
            "padding_share": 0.0 if packing else None, "final_loss": result.metrics.get("train_loss"),
            "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=2048)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    data, model_dir = tmp / "stratos.jsonl", tmp / "model"
    write_data(data, args.samples)
    build_model(model_dir)
    steps = args.samples // args.batch  # about one pass over the file (r1kit draws with replacement)
    results = [
        run_r1kit("r1kit padded", model_dir, data, tmp, args.batch, steps, False, args.max_seq_length),
        run_r1kit("r1kit packed", model_dir, data, tmp, args.batch, steps, True, args.max_seq_length),
        run_trl("TRL padded", model_dir, data, tmp, args.batch, False, args.max_seq_length),
        run_trl("TRL packed (bfd)", model_dir, data, tmp, args.batch, True, args.max_seq_length),
    ]
    print(f"\n{'setup':<20} {'tokens/s':>10} {'pad share':>10} {'train s':>8}")
    for r in results:
        pad = "n/a" if r["padding_share"] is None else f"{r['padding_share']:.2f}"
        print(f"{r['setup']:<20} {r['tokens_per_second']:>10.0f} {pad:>10} {r['train_seconds']:>8.1f}")
    out = ROOT / "benchmarks" / "results" / "sft_packing.json"
    out.write_text(json.dumps({"samples": args.samples, "batch": args.batch, "max_seq_length": args.max_seq_length,
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
