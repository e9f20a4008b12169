"""The policy's weights as a vLLM engine loads them: Hugging Face checkpoint names, LoRA merged, tied heads written.

Both vLLM layouts (in-process and server) receive the trainer's weights after every optimizer step
as a flat ``{name: tensor}`` in the checkpoint format ``save_pretrained`` writes, so vLLM's own
``load_weights`` maps them to its fused layers. Two traps, measured:

- a LoRA model is merged first (vLLM serves the merged weights; adapters are not reloaded per step);
- with tied embeddings ``save_pretrained`` drops ``lm_head.weight``, and a vLLM reload then keeps
  the old head silently, so the head is always written out explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

WEIGHTS_FILE = "model.safetensors"


def unwrap(model):
    return getattr(model, "module", model)  # DDP / accelerate wrapper


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """{checkpoint name: detached CPU-or-device tensor} of `model`, LoRA merged, lm_head included."""
    model = unwrap(model)
    if hasattr(model, "peft_config") and hasattr(model, "merge_adapter"):
        return _merged_lora_state(model)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    return _with_head(model, state)


def _merged_lora_state(model) -> dict[str, torch.Tensor]:
    """Merge the adapters into the base weights, copy them out under the base model's names, unmerge."""
    model.merge_adapter()
    try:
        base = model.get_base_model()
        state = {}
        for name, t in base.state_dict().items():
            if "lora_" in name:
                continue
            state[name.replace(".base_layer.", ".")] = t.detach().clone()
        return _with_head(base, state)
    finally:
        model.unmerge_adapter()


def _with_head(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "lm_head.weight" not in state and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        if head is not None:
            state["lm_head.weight"] = head.weight.detach()
    return state


def save_weights(state: dict[str, torch.Tensor], directory: str | Path) -> Path:
    """Write `state` as directory/model.safetensors atomically (temp file, then rename); returns the file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = _flat(state)
    target = directory / WEIGHTS_FILE
    tmp = directory / f".tmp-{os.getpid()}-{WEIGHTS_FILE}"
    save_file(flat, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    return target


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The same safetensors file as bytes, for an HTTP weight push."""
    from safetensors.torch import save

    return save(_flat(state), metadata={"format": "pt"})


def _flat(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, no shared storage (safetensors refuses aliases such as tied weights: copy them)."""
    seen: set[int] = set()
    flat = {}
    for name, t in state.items():
        t = t.to("cpu").contiguous()
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        flat[name] = t
    return flat
