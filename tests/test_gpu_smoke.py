"""benchmarks/gpu_smoke.py: each check stands alone and is recorded; its CPU rehearsal (with what a GPU machine of
torch, transformers, accelerate and peft lacks blocked at import) passes every check."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_smoke  # noqa: E402


def test_a_failing_check_is_recorded_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    def broken(ctx):
        raise RuntimeError("r1kit train exited 1:\nCUDA error: an illegal memory access was encountered")

    checks = {"first": lambda ctx: {"s_per_step": 0.5}, "broken": broken,
              "report": lambda ctx: {"skipped": "matplotlib is not installed here"}, "last": lambda ctx: {}}
    monkeypatch.setattr(gpu_smoke, "CHECKS", checks)
    records = gpu_smoke.run_checks(argparse.Namespace(only=None))
    assert [(r["check"], r["status"]) for r in records] == [
        ("first", "passed"), ("broken", "failed"), ("report", "skipped"), ("last", "passed")]
    assert records[0]["s_per_step"] == 0.5 and records[2]["reason"] == "matplotlib is not installed here"
    assert records[1]["error"].endswith("CUDA error: an illegal memory access was encountered")
    assert "broken          failed" in capsys.readouterr().out


def test_every_check_is_listed_in_the_docstring():
    assert all(f"\n  {name} " in gpu_smoke.__doc__ for name in gpu_smoke.CHECKS)


@pytest.mark.slow
def test_the_cpu_rehearsal_passes_with_the_absent_packages_blocked(tmp_path):
    """Minutes: every check in its smallest form, each a fresh process importing torch and r1kit."""
    out = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--device", "cpu", "--quick",
                           "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=3600)
    result = json.loads(out.read_text())
    assert result == json.loads((tmp_path / "out" / "gpu_smoke.json").read_text())
    assert set(result["blocked"]) == set(gpu_smoke.BLOCKED)
    statuses = {r["check"]: r["status"] for r in result["checks"]}
    assert statuses == {**{name: "passed" for name in gpu_smoke.CHECKS}, "report": "skipped"}, done.stdout
    resume = next(r for r in result["checks"] if r["check"] == "resume")
    assert resume["max_abs_diff"] == 0
    grpo = next(r for r in result["checks"] if r["check"] == "tiny_grpo_fp32")
    assert grpo["steps"] == 2 and grpo["s_per_step"] > 0 and grpo["tokens_per_s"] > 0
