"""LoRA to the generator as an adapter (``model.lora.sync``): push the adapter, not merged weights.

With LoRA the trainer used to merge the adapters into the base weights, export the whole model and
unmerge (r1kit.rollout.weights), so every sync moved the full model: 621 MB for SmolLM2-135M in fp32,
where its r=16 adapters on q/k/v/o are a few MB. With ``sync: adapter`` the generator keeps the base
weights and serves the adapter through vLLM's LoRA support (a ``LoRARequest`` per version in process,
serve-gen's /r1kit/load_adapter route on a server); nothing is merged on the trainer. verl does the
same (``lora.merge=False``); TRL merges.

Modes: ``merged`` always merges; ``adapter`` refuses (ConfigError) an adapter vLLM cannot serve;
``auto`` (the default) serves the adapter when it can and otherwise merges, with a one-line notice
that names why. What vLLM 0.32 refuses, read from its ``lora/peft_helper.py`` (``_validate_features``
and ``validate_legal``) and ``config/lora.py`` (``MaxLoRARanks``): modules_to_save, DoRA, LoRA bias,
bias != "none", initialisations that change the base weights (PiSSA, OLoRA, LoftQ, ...),
layer_replication, and ranks above 512. Embedding and output-head targets are also merged: vLLM
adapts them per model class, if at all, and r1kit's tests cover the decoder's linear layers only.
QLoRA (a 4-bit base on the trainer) merges as before: the engine's base is not the trainer's. So does
in-process vLLM with GPU sleep mode: its level-2 sleep discards the base weights every step, so they
would travel every sync anyway (sleep level 1 would keep them; untested here, no GPU).

The base weights: the engine starts from the model's files, which are the frozen base, but a server
outlives runs and may hold another run's weights. So the first adapter sync also sends the base
weights once (the same push as a merged sync, without the adapters), and again whenever the server
reports another weights version than the one that push left (a restart, another writer).

The adapter travels as one safetensors file in PEFT's own layout (``adapter_model.safetensors``
names, from ``get_peft_model_state_dict``) whose metadata carries ``adapter_config.json`` under
ADAPTER_CONFIG_KEY, so one HTTP body holds both files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from r1kit.config import ConfigError
from r1kit.rollout.weights import unwrap

log = logging.getLogger("r1kit.rollout.lora_sync")

MODES = ("auto", "adapter", "merged")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32 config/lora.py MaxLoRARanks
ADAPTER_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"
ADAPTER_CONFIG_KEY = "r1kit_adapter_config"  # safetensors metadata key holding adapter_config.json's text
_SERVED_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # string inits vLLM serves (peft_helper.py)
_HEAD_OR_EMBEDDING = ("lm_head", "embed_tokens", "embed_in", "embed_out", "wte", "word_embeddings")


def engine_rank(rank: int) -> int | None:
    """The smallest max_lora_rank vLLM accepts that holds `rank`; None above its largest."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def max_rank(config: dict) -> int:
    return max([int(config.get("r") or 0), *(int(v) for v in (config.get("rank_pattern") or {}).values())])


def adapter_blockers(config: dict, load_in_4bit: bool = False, server_max_rank: int | None = None) -> list[str]:
    """Why vLLM cannot serve the adapter `config` (adapter_config.json as a dict), one phrase each; [] if it can.

    server_max_rank: a running server's --max-lora-rank (None: the engine is built for this adapter).
    """
    why = []
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        why.append(f"peft_type {config.get('peft_type')} is not LoRA")
    if config.get("modules_to_save"):
        why.append(f"modules_to_save={sorted(config['modules_to_save'])} (vLLM serves LoRA deltas only)")
    if config.get("use_dora"):
        why.append("DoRA (use_dora) is not served by vLLM")
    if config.get("lora_bias") or config.get("bias", "none") != "none":
        why.append("adapter biases are not served by vLLM")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _SERVED_INITS:
        why.append(f"init_lora_weights={init!r} changes the base weights")
    if config.get("layer_replication"):
        why.append("layer_replication is not served by vLLM")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    heads = sorted(t for t in targets if t.rsplit(".", 1)[-1] in _HEAD_OR_EMBEDDING)
    if heads:
        why.append(f"target_modules include {heads} (embedding/head LoRA: merged here)")
    rank = max_rank(config)
    if engine_rank(rank) is None:
        why.append(f"rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
    elif server_max_rank is not None and rank > server_max_rank:
        why.append(f"rank {rank} is above the server's --max-lora-rank {server_max_rank}")
    if load_in_4bit:
        why.append("model.load_in_4bit: the trainer's base is 4-bit, the engine's is not")
    return why


def resolve(mode: str, config: dict | None, where: str, load_in_4bit: bool = False,
            server_max_rank: int | None = None, server_lora: bool = True, engine_reasons: list[str] = ()) -> str:
    """'adapter' or 'merged' for model.lora.sync=`mode` and a policy whose adapter config is `config`
    (None: no LoRA, so 'merged', the full-weight path). auto merges with a notice naming why; adapter raises.

    where: the engine, for the messages; server_lora: the server was started with LoRA enabled;
    engine_reasons: why the engine's own settings make the adapter path pointless (they count as blockers).
    """
    if mode not in MODES:
        raise ValueError(f"model.lora.sync must be one of {MODES}, got {mode!r}")
    if config is None or mode == "merged":
        return "merged"
    why = adapter_blockers(config, load_in_4bit, server_max_rank)
    if not server_lora:
        why.insert(0, "the generation server was started without LoRA (add `--enable-lora --max-lora-rank "
                      f"{engine_rank(max_rank(config)) or max_rank(config)}` to `r1kit serve-gen`)")
    why += list(engine_reasons)
    if not why:
        return "adapter"
    if mode == "adapter":
        raise ConfigError(f"model.lora.sync=adapter: {where} cannot serve this adapter: {'; '.join(why)}; "
                          "set model.lora.sync=merged (or auto) to merge it into the weights every sync")
    log.warning("r1kit: model.lora.sync=auto: %s syncs merged weights, not the adapter: %s", where, "; ".join(why))
    return "merged"


def quantized(model) -> bool:
    """The policy's base weights are bitsandbytes-quantized (QLoRA)."""
    model = unwrap(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


# ------------------------------------------------------------ the adapter's files


def adapter_config(model) -> dict | None:
    """The policy's active LoRA config as adapter_config.json's dict (as peft's save_pretrained: sets become
    lists, enums their values), or None when the model has no peft adapter."""
    model = unwrap(model)
    configs = getattr(model, "peft_config", None)
    if not configs or not hasattr(model, "get_base_model"):
        return None
    name = getattr(model, "active_adapter", "default")
    name = name[0] if isinstance(name, list) else name
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in configs[name].to_dict().items()}
    return json.loads(json.dumps(config, default=str))  # plain JSON values: peft's str enums become "LORA", ...


def export_adapter(model) -> tuple[dict[str, torch.Tensor], str]:
    """({PEFT adapter name: detached CPU tensor}, adapter_config.json's text) of `model`'s active adapter."""
    from peft import get_peft_model_state_dict

    model = unwrap(model)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in get_peft_model_state_dict(model).items()}
    return tensors, json.dumps(adapter_config(model), indent=2, sort_keys=True)


def adapter_bytes(tensors: dict[str, torch.Tensor], config_json: str) -> bytes:
    """One safetensors file holding the adapter's tensors, with adapter_config.json in its metadata."""
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pt", ADAPTER_CONFIG_KEY: config_json})


def save_adapter(tensors: dict[str, torch.Tensor], config_json: str, directory: str | Path) -> int:
    """Write directory/{adapter_model.safetensors, adapter_config.json} (each via a temp file and a rename);
    returns the bytes written."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{os.getpid()}-{ADAPTER_FILE}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / ADAPTER_FILE)
    (directory / f".tmp-{CONFIG_FILE}").write_text(config_json)
    os.replace(directory / f".tmp-{CONFIG_FILE}", directory / CONFIG_FILE)
    return (directory / ADAPTER_FILE).stat().st_size + len(config_json.encode())


def unpack_adapter(body: bytes, directory: str | Path) -> int:
    """adapter_bytes' inverse: writes PEFT's two files into `directory`; returns the tensors' count."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ADAPTER_FILE).write_bytes(body)
    return finish_upload(directory)


def finish_upload(directory: str | Path) -> int:
    """On the server, after an upload was written to directory/adapter_model.safetensors: writes its
    adapter_config.json from the file's metadata; returns the tensors' count. Raises ValueError for a file
    that is not an adapter upload."""
    from safetensors import safe_open

    directory = Path(directory)
    try:
        with safe_open(str(directory / ADAPTER_FILE), "pt") as f:
            metadata, count = f.metadata() or {}, len(list(f.keys()))
        config = json.loads(metadata[ADAPTER_CONFIG_KEY])
    except Exception as e:  # safetensors' own errors, a missing key, bad JSON: all one refusal
        raise ValueError(f"not an adapter upload (a safetensors file with {ADAPTER_CONFIG_KEY!r} "
                         f"metadata): {type(e).__name__}: {e}") from None
    if not isinstance(config, dict) or "r" not in config:
        raise ValueError("the adapter's config has no rank 'r'")
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    return count
