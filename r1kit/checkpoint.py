"""Atomic checkpoints: write everything into a temporary directory, then rename it into place.

A crash mid-save leaves at most a ``.tmp-step-N`` directory (removed on the next save), never a
half-written ``step-N``. A checkpoint holds the model and tokenizer (``save_pretrained``, so it
loads like any hub model) and ``trainer_state.pt`` (optimizer, scheduler, step, RNG states) so a
resumed run continues exactly.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from r1kit.models import save_model

STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(ckpt_root: Path, step: int, model, tokenizer, state: dict | None = None, keep: int = 2) -> Path:
    """Write checkpoints/step-N atomically and keep the newest `keep` of them."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tokenizer, tmp)
    if state is not None:
        torch.save(state, tmp / "trainer_state.pt")
    if final.exists():  # re-saving the same step (after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_final(path: Path, model, tokenizer) -> Path:
    """The final model, written the same atomic way."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


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
    if not (path / "trainer_state.pt").exists():
        raise FileNotFoundError(f"train.resume_from={resume_from!r} is not a checkpoint (no trainer_state.pt)")
    return path
