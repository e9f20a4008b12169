"""The policy's weights as a vLLM engine loads them: Hugging Face checkpoint names, LoRA merged, tied heads written.

Both vLLM layouts (in-process and server) receive the trainer's weights after every optimizer step
as a flat ``{name: tensor}`` in the checkpoint format ``save_pretrained`` writes, so vLLM's own
``load_weights`` maps them to its fused layers. Two traps, measured:

- a LoRA model is merged first when it is synced merged (``model.lora.sync``; r1kit.rollout.lora_sync
  sends the adapter alone and the base weights once);
- with tied embeddings ``save_pretrained`` drops ``lm_head.weight``, and a vLLM reload then keeps
  the old head silently, so the head is always written out explicitly.

``export_buckets`` gives the same weights in parts of bounded size, for a server push and for
sharded models (ZeRO-3, FSDP2): a ``Gatherer`` makes one decoder layer whole at a time (every rank
takes part), so the whole model is never gathered at once on the accelerator. A part always holds
whole decoder layers: vLLM fuses q/k/v and gate/up inside a layer, and its in-place reload leaves
the unsent parts of a half-loaded fused layer uninitialised (vLLM 0.32's ``reload/layerwise.py``
materialises the layer with ``torch.empty`` and processes it at the end: read in its source, not
provoked here). Embeddings, the final norm and the head travel together (a tied head shares the
embedding's tensor).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_FILE = "model.safetensors"


def unwrap(model):
    return getattr(model, "module", model)  # DDP / accelerate wrapper


def export_state_dict(model, merge_lora: bool = True) -> dict[str, torch.Tensor]:
    """{checkpoint name: detached CPU-or-device tensor} of `model`, lm_head included; LoRA merged, or with
    merge_lora=False its base weights alone (the adapter travels on its own, r1kit.rollout.lora_sync)."""
    model = unwrap(model)
    if hasattr(model, "peft_config") and hasattr(model, "merge_adapter"):
        return _merged_lora_state(model) if merge_lora else base_state(model)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    return _with_head(model, state)


def _merged_lora_state(model) -> dict[str, torch.Tensor]:
    """Merge the adapters into the base weights, copy them out under the base model's names, unmerge."""
    model.merge_adapter()
    try:
        return base_state(model, copy=True)
    finally:
        model.unmerge_adapter()


def base_state(model, copy: bool = False) -> dict[str, torch.Tensor]:
    """A PEFT model's base weights (merged or not, as they stand) under the base model's checkpoint names,
    head included, adapters left out: what a LoRA-serving engine holds beside the adapter (lora_sync).
    copy: clone each tensor (a merged state is unmerged right after)."""
    base = unwrap(model).get_base_model()
    state = {}
    for name, t in base.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = t.detach().clone() if copy else t.detach()
    return _with_head(base, state)


def _with_head(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "lm_head.weight" not in state and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        if head is not None:
            state["lm_head.weight"] = head.weight.detach()
    return state


@contextmanager
def _as_is(tensors: list[torch.Tensor]):
    yield [t.detach() for t in tensors]


@dataclass(frozen=True)
class Gatherer:
    """How to see whole tensors of a model whose weights may be sharded.

    numel(t): t's full number of elements; whole(tensors): a context manager giving full tensors, valid
    inside it; collective: whole() is a collective operation (every rank calls it with the same tensors).
    """

    numel: Callable[[torch.Tensor], int] = torch.Tensor.numel
    whole: Callable = _as_is
    collective: bool = False


LOCAL = Gatherer()
_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def load_unit(name: str) -> str:
    """The unit a checkpoint name travels in: its decoder layer ("model.layers.3"), or "" for the rest
    (embeddings, final norm, head)."""
    match = _LAYER.match(name)
    return match.group(1) if match else ""


def plan_buckets(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Names (in `sizes`' order, their byte sizes as values) packed into buckets of at most max_bytes,
    each unit (load_unit) whole in one bucket; a unit larger than max_bytes is a bucket of its own."""
    buckets: list[list[str]] = []
    filled = max_bytes + 1  # forces a new bucket for the first unit
    for names in _units(list(sizes)):
        size = sum(sizes[n] for n in names)
        if filled + size > max_bytes:
            buckets.append([])
            filled = 0
        buckets[-1].extend(names)
        filled += size
    return buckets


def export_buckets(model, max_bytes: int, gatherer: Gatherer = LOCAL, keep: bool = True,
                   merge_lora: bool = True) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """(part, parts, {name: tensor}) for part = 1..parts: together export_state_dict(model), split by plan_buckets.

    Sharded tensors are made whole one load unit at a time and copied to the CPU; keep=False (ranks that
    only take part in the gathers) yields empty dicts. A LoRA model is merged and exported at once, as
    export_state_dict does (LoRA is never sharded here); merge_lora=False: its base weights alone.
    """
    model = unwrap(model)
    if hasattr(model, "peft_config") and hasattr(model, "merge_adapter"):
        tensors, gatherer = export_state_dict(model, merge_lora), LOCAL
    else:
        tensors = _with_head(model, dict(model.state_dict(keep_vars=True)))
    sizes = {name: gatherer.numel(t) * t.element_size() for name, t in tensors.items()}
    buckets = plan_buckets(sizes, max_bytes)
    for part, names in enumerate(buckets, start=1):
        bucket: dict[str, torch.Tensor] = {}
        for unit in _units(names):
            distinct = list({id(tensors[n]): tensors[n] for n in unit}.values())  # a tied tensor is gathered once
            with torch.no_grad(), gatherer.whole(distinct) as full:
                if keep:
                    by_id = {id(t): f for t, f in zip(distinct, full)}
                    copy = gatherer is not LOCAL  # gathered storage is freed when the context ends
                    bucket.update({n: by_id[id(tensors[n])].detach().to("cpu", copy=copy) for n in unit})
        yield part, len(buckets), bucket


def _units(names: list[str]) -> list[list[str]]:
    """`names` grouped by load_unit, in order of first appearance."""
    units: dict[str, list[str]] = {}
    for name in names:
        units.setdefault(load_unit(name), []).append(name)
    return list(units.values())


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
