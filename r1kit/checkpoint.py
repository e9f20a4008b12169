"""Atomic checkpoints: write everything into a temporary directory, then rename it into place.

A crash mid-save leaves at most a ``.tmp-step-N`` directory (removed on the next save), never a
half-written ``step-N``. A checkpoint holds:

- the model and tokenizer (``save_pretrained``: loads like any hub model; with LoRA, merged or the
  PEFT adapter as ``model.lora.save`` says), written by the main process from the whole weights;
- ``accelerator/``: ``Accelerator.save_state`` (weights, optimizer state, RNG states) in each strategy's
  own layout: one file under DDP, DeepSpeed's per-rank ZeRO shards, FSDP's optimizer state; a resumed
  run needs the same strategy and number of processes;
- ``trainer_state.pt``: scheduler, step and run bookkeeping, loaded with ``weights_only=True``.

Every process calls ``save_checkpoint`` (gathering sharded weights is collective); only the main
process renames and prunes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from r1kit.models import save_model

STEP_DIR = re.compile(r"^step-(\d+)$")
ACCELERATOR_DIR = "accelerator"
TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(ckpt_root: Path, step: int, accelerator, model, tokenizer, state: dict, keep: int = 2,
                    lora_save: str = "merged") -> Path:
    """Write checkpoints/step-N atomically (all processes call this) and keep the newest `keep`."""
    from r1kit.distributed import full_state_dict

    ckpt_root = Path(ckpt_root)
    final, tmp = ckpt_root / f"step-{step}", ckpt_root / f".tmp-step-{step}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights = full_state_dict(accelerator, model)  # collective under ZeRO-3 / FSDP
    if main:
        save_model(accelerator.unwrap_model(model), tokenizer, tmp, state_dict=weights, lora_save=lora_save)
    accelerator.save_state(str(tmp / ACCELERATOR_DIR))
    if main:
        torch.save(state, tmp / TRAINER_STATE)
        _fsync_tree(tmp)
    accelerator.wait_for_everyone()
    if main:
        if final.exists():  # re-saving the same step (after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        for old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(checkpoint: Path) -> dict:
    """The bookkeeping of a checkpoint; weights_only: a crafted file cannot run code when it is read."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # a truncated or foreign file: name it instead of a pickle traceback
        raise ValueError(f"{path} is not a readable r1kit trainer state ({type(e).__name__}: {e})") from None


def save_final(path: Path, accelerator, model, tokenizer, lora_save: str = "merged") -> Path:
    """The final model, written the same atomic way (all processes call this)."""
    from r1kit.distributed import full_state_dict

    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    weights = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(accelerator.unwrap_model(model), tokenizer, tmp, state_dict=weights, lora_save=lora_save)
        _fsync_tree(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under root to disk, so a power loss after the rename cannot
    leave a renamed checkpoint with empty files."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not Path(ckpt_root).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_root).iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume_from: str, ckpt_root: Path) -> Path:
    """`latest` -> this run's newest checkpoint; otherwise the given directory, which must be a checkpoint."""
    if resume_from == "latest":
        found = list_checkpoints(ckpt_root)
        if not found:
            raise FileNotFoundError(f"train.resume_from=latest but {ckpt_root} holds no checkpoint")
        return found[-1]
    path = Path(resume_from)
    if not (path / TRAINER_STATE).exists() or not (path / ACCELERATOR_DIR).is_dir():
        raise FileNotFoundError(f"train.resume_from={resume_from!r} is not an r1kit checkpoint "
                                f"(expected {TRAINER_STATE} and {ACCELERATOR_DIR}/)")
    return path
