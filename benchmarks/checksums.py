"""What checkpoint checksums cost: write_checksums and verify_checksums on a SmolLM2-135M-sized file.

    python benchmarks/checksums.py [--mb 270]

A checkpoint directory with one random file of --mb megabytes (270 MB: SmolLM2-135M's bf16 weights; its fp32
weights plus AdamW state make a checkpoint about 4x that), summed and verified three times each (SHA-256).
Prints a table and writes benchmarks/results/checksums.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from r1kit.checkpoint import verify_checksums, write_checksums

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=270)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step-1"
        path.mkdir()
        (path / "model.safetensors").write_bytes(os.urandom(args.mb * 1_000_000))
        write_seconds, verify_seconds = [], []
        for _ in range(3):
            start = time.perf_counter()
            write_checksums(path)
            write_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            verify_checksums(path)
            verify_seconds.append(time.perf_counter() - start)
    result = {"megabytes": args.mb, "write_seconds_best": round(min(write_seconds), 3),
              "verify_seconds_best": round(min(verify_seconds), 3),
              "verify_gb_per_second": round(args.mb / 1000 / min(verify_seconds), 2), "cpu_count": os.cpu_count(),
              "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]}}
    print(f"{'MB':>6} {'write s':>8} {'verify s':>9} {'GB/s':>6}")
    print(f"{args.mb:>6} {result['write_seconds_best']:>8} {result['verify_seconds_best']:>9} "
          f"{result['verify_gb_per_second']:>6}")
    out = ROOT / "benchmarks" / "results" / "checksums.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
