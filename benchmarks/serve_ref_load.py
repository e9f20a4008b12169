"""A bounded load on `r1kit serve-ref` over loopback: latency, errors and memory under good, bad and stalled callers.

    python benchmarks/serve_ref_load.py                        # builtin:tiny-sft, 400 requests, 8 callers
    python benchmarks/serve_ref_load.py --requests 100 --concurrency 4 --max-seconds 60

The server runs as its own process (`python -m r1kit serve-ref MODEL`, bound to 127.0.0.1 only) so its
memory is its own. Callers send --requests POST /v1/logprobs requests from --concurrency threads, every
one bounded in time (--max-seconds for the whole run, 30 s per request): most are a GRPO-sized batch
(16 rows of a ~40-token prompt and a 16-64-token completion), one in ten is a request the server must
refuse (oversized, boolean ids, NaN or 1e-300 temperature, not JSON, nested too deep, rows that pad past
the row bound), --stalled extra connections send headers and half a body and go quiet, and --idle more
(40 by default: more than the 32 request slots) send nothing or half a header. Reported: p50/p99 latency of the good requests, answers by status, "errors"
(a good request not answered 200, a bad one not answered 4xx, a dropped connection, a body that is
not strict JSON), the server's peak RSS, and whether stalled and idle connections were cut off.
Writes benchmarks/results/serve_ref_load.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

HOST = "127.0.0.1"  # loopback only: this script never talks to another machine
RESULTS = Path(__file__).resolve().parent / "results" / "serve_ref_load.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def good_request(rng: random.Random, vocab: int) -> bytes:
    rows = 16
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(30, 50))] for _ in range(rows)]
    completions = [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))] for _ in range(rows)]
    return json.dumps({"prompt_ids": prompts, "completion_ids": completions, "temperature": 1.0}).encode()


BAD_REQUESTS = [  # each must be refused with a 4xx, never a 5xx or a dropped connection
    json.dumps({"prompt_ids": [[5] * 40] * 2000, "completion_ids": [[6] * 8] * 2000}).encode(),  # too many rows
    json.dumps({"prompt_ids": [[5] * 20000], "completion_ids": [[6]]}).encode(),  # one huge row
    json.dumps({"prompt_ids": [[5, True]], "completion_ids": [[6]]}).encode(),  # a boolean id
    b'{"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": NaN}',  # non-finite temperature
    b"{not json",
    b"[" * 100_000 + b"]" * 100_000,  # nested past the JSON parser's recursion limit
    json.dumps({"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": 1e-300}).encode(),  # overflows logits / T
    json.dumps({"prompt_ids": [[5] * 9000, [5]], "completion_ids": [[6], [6] * 9000]}).encode(),  # pads rows to 18001
]


def start_server(model: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "r1kit", "serve-ref", model, "--host", HOST, "--port", str(port),
                             "--read-timeout-s", "5", "--header-timeout-s", "5"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"serve-ref exited: {proc.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("serve-ref did not start in 120 s")


def run(args) -> dict:
    port = free_port()
    proc = start_server(args.model, port, args.threads)
    server = psutil.Process(proc.pid)
    rss = {"start_mb": server.memory_info().rss / 2**20, "peak_mb": 0.0}
    stop = threading.Event()

    def sample_memory():
        while not stop.is_set():
            rss["peak_mb"] = max(rss["peak_mb"], server.memory_info().rss / 2**20)
            time.sleep(0.05)

    threading.Thread(target=sample_memory, daemon=True).start()
    stalled = [socket.create_connection((HOST, port), timeout=30) for _ in range(args.stalled)]
    for s in stalled:
        s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"prompt")
    idle = [socket.create_connection((HOST, port), timeout=30) for _ in range(args.idle)]  # more than the 32 slots
    for s in idle[::2]:
        s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\n")  # half a header, then nothing
    rng = random.Random(0)
    plan = [("bad", BAD_REQUESTS[i // 10 % len(BAD_REQUESTS)]) if i % 10 == 9 else ("good", good_request(rng, 40))
            for i in range(args.requests)]
    deadline = time.time() + args.max_seconds
    latencies, statuses, errors = [], Counter(), Counter()

    def one(item):
        kind, body = item
        if time.time() > deadline:
            return kind, None, 0.0, "skipped (time bound)"
        start = time.perf_counter()
        try:
            status, payload = post(port, body)
            json.loads(payload, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # strict JSON
        except (OSError, ValueError) as e:
            return kind, None, time.perf_counter() - start, type(e).__name__
        ok = status == 200 if kind == "good" else 400 <= status < 500
        return kind, status, time.perf_counter() - start, None if ok else f"{kind} answered {status}"

    wall = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        for kind, status, seconds, error in pool.map(one, plan):
            statuses[f"{kind} {status}"] += 1
            if error:
                errors[error] += 1
            elif kind == "good":
                latencies.append(seconds)
    wall = time.perf_counter() - wall
    time.sleep(6)  # past the 5 s read and header timeouts: the stalled and idle connections must be closed by now

    def closed(sockets: list) -> int:
        count = 0
        for s in sockets:
            s.settimeout(1)
            try:
                count += s.recv(1) == b""
            except OSError:
                pass
            s.close()
        return count

    cut_off, idle_cut_off = closed(stalled), closed(idle)
    stop.set()
    proc.terminate()
    proc.wait(timeout=30)
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {"model": args.model, "requests": args.requests, "concurrency": args.concurrency,
            "wall_s": round(wall, 2), "good_answered": len(latencies), "p50_ms": round(pct(0.5), 1),
            "p99_ms": round(pct(0.99), 1), "answers": dict(statuses), "errors": dict(errors),
            "rss_start_mb": round(rss["start_mb"], 1), "rss_peak_mb": round(rss["peak_mb"], 1),
            "stalled": args.stalled, "stalled_cut_off": cut_off, "idle": args.idle, "idle_cut_off": idle_cut_off,
            "server_threads": args.threads,
            "load_average": os.getloadavg()[0], "machine": platform.machine(),
            "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:tiny-sft")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--stalled", type=int, default=8, help="connections that send headers and half a body")
    parser.add_argument("--idle", type=int, default=40, help="connections that send nothing or half a header")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's OMP_NUM_THREADS (on a shared or small CPU, more threads than free cores "
                             "made each request 10x slower here)")
    args = parser.parse_args()
    result = run(args)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:>16}  {value}")


if __name__ == "__main__":
    main()
