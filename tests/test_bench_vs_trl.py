"""benchmarks/vs_trl.py's GPU run (issue 12), rehearsed on the CPU: r1kit alone on the qwen0.5b config, on a
machine without TRL, datasets or math-verify (the lent GPU machines have none of them), writes every number
the GPU run reports. Slow: it builds a model with Qwen2.5-0.5B's 151,936-token vocabulary (one layer)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ABSENT = ("trl", "datasets", "math_verify", "deepspeed", "vllm")


def test_the_gpu_run_works_with_r1kit_alone(tmp_path):
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    # a None entry in sys.modules makes `import name` raise ImportError, as on a machine without the package
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor m in {ABSENT!r}:\n    sys.modules[m] = None\n")
    out = tmp_path / "vs_trl.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "benchmarks/vs_trl.py", "--frameworks", "r1kit", "--configs", "qwen0.5b", "--dtypes", "bf16",
         "--qwen-layers", "1", "--prompts", "1", "--max-new-tokens", "4", "--steps", "2", "--warmup", "1",
         "--cache", str(tmp_path / "cache"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert "trl" not in result["versions"] and result["machine"]["device"] == "cpu"
    (entry,) = result["entries"]
    assert entry["config"] == "qwen0.5b" and entry["spec"]["device"] == "cpu"
    r1kit = entry["r1kit"]
    # a random model of a 151,936-token vocabulary never ends early: every completion is 4 tokens, 8 per step
    assert r1kit["generated_tokens_per_step"] == 4 * 8
    assert r1kit["s_per_step"] > 0 and 0 < r1kit["mfu"] and r1kit["peak_mib"] == r1kit["rss_peak_mib"] > 100
    assert {"time/generate", "time/update"} <= set(r1kit["phases_s"])
    config = json.loads((tmp_path / "cache" / "qwen0.5b-1-layers" / "config.json").read_text())
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (151936, 896, 1)
