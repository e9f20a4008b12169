"""Atomic checkpoints: write everything into a temporary directory, then rename it into place.

A crash mid-save leaves at most a ``.tmp-step-N`` directory (removed on the next save), never a
half-written ``step-N``. A checkpoint holds:

- the model and tokenizer (``save_pretrained``: loads like any hub model; with LoRA, merged or the
  PEFT adapter as ``model.lora.save`` says), written by the main process from the whole weights;
- ``accelerator/``: ``Accelerator.save_state`` (weights, optimizer state, RNG states) in each strategy's
  own layout: one file under DDP, DeepSpeed's per-rank ZeRO shards, FSDP's optimizer state; a resumed
  run needs the same strategy and number of processes;
- ``trainer_state.pt``: scheduler, step and run bookkeeping, loaded with ``weights_only=True``;
- ``checksums.json``: the size and SHA-256 of every other file, written last: a ``step-N`` without it
  is not a checkpoint (``list_checkpoints`` skips it), and a resume verifies every file against it, so
  a torn or altered file is one error naming it. Measured (benchmarks/checksums.py): verifying a
  270 MB file (SmolLM2-135M's bf16 weights) takes 0.56 s on a shared 2-core CPU at load 4 (0.5 GB/s),
  2.3 s at load 10; a checkpoint with fp32 weights and AdamW state is about 4x the bf16 model's size.

Every process calls ``save_checkpoint`` (gathering sharded weights is collective); only the main
process renames and prunes. Nothing is deleted in place: a checkpoint to prune, or to replace, is
first renamed to ``.trash-step-N`` (never counted), then deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch

from r1kit.models import save_model

STEP_DIR = re.compile(r"^step-(\d+)$")
ACCELERATOR_DIR = "accelerator"
TRAINER_STATE = "trainer_state.pt"
CHECKSUMS = "checksums.json"
PICKLE_SUFFIXES = (".pt", ".bin", ".pkl", ".pth")
# Classes DeepSpeed's ZeRO optimizer shards hold (measured: ZeRO-2/3 on 0.19). Anything else in a pickle is refused.
DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.utils.tensor_fragment.fragment_address")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: torn, foreign, or holding objects that would run code when read."""


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
    accelerator.wait_for_everyone()  # every rank's shards are written before they are summed
    if main:
        torch.save(state, tmp / TRAINER_STATE)
        write_checksums(tmp)
        _fsync_tree(tmp)
        _publish(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep]:
            _discard(old)
    accelerator.wait_for_everyone()
    return final


def _publish(tmp: Path, path: Path) -> None:
    """Rename a finished temporary directory into place; one already there (the same step saved again after a
    resume, or final/) goes to the trash first, so at every instant `path` is either the old or the new whole."""
    if path.exists():
        _discard(path, delete=False)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    _empty_trash(path.parent)


def _discard(path: Path, delete: bool = True) -> None:
    """Rename `path` to .trash-<name> (a kill from here on leaves nothing that counts as a checkpoint), then delete."""
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)  # a trash left by an earlier kill: never counted, safe to drop
    os.replace(path, trash)
    _fsync_dir(path.parent)
    if delete:
        shutil.rmtree(trash)


def _empty_trash(directory: Path) -> None:
    for trash in directory.glob(".trash-*"):
        shutil.rmtree(trash)


def write_checksums(directory: Path) -> None:
    """checksums.json: the size and SHA-256 of every file under `directory`, written last."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    (directory / CHECKSUMS).write_text(json.dumps({"files": files}, indent=1) + "\n")


def verify_checksums(directory: Path) -> int:
    """Check every file of a checkpoint against its checksums.json (sizes first, then SHA-256); the first file
    that is missing, torn, altered or added is one CheckpointError naming it. Returns the number of files."""
    directory = Path(directory)
    try:
        listed = json.loads((directory / CHECKSUMS).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{directory} has no readable {CHECKSUMS} ({_first_line(e)}): it is not a complete r1kit "
                              "checkpoint (cut short, or written by another tool)") from None
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    for name in sorted(present - set(listed)):
        raise CheckpointError(f"{directory / name} was not written with the checkpoint (not in {CHECKSUMS})")
    for name, expected in sorted(listed.items()):
        path = directory / name
        if name not in present:
            raise CheckpointError(f"{path} is missing from the checkpoint")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{path} is torn: {size} bytes, {expected['bytes']} were written")
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path} does not match its checksum: its bytes changed after it was written")
    return len(listed)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_trainer_state(checkpoint: Path) -> dict:
    """The bookkeeping of a checkpoint; weights_only: a crafted file cannot run code when it is read."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # a truncated or foreign file: name it instead of a pickle traceback
        raise CheckpointError(f"{path} is not a readable r1kit trainer state ({_first_line(e)})") from None
    if not isinstance(state, dict) or not {"scheduler", "run_state"} <= set(state):
        raise CheckpointError(f"{path} is not an r1kit trainer state (expected scheduler and run_state)")
    return state


def verify_pickles(directory: Path) -> int:
    """Open every pickle file under `directory` with torch's restricted unpickler (weights_only, memory-
    mapped, so nothing is read into memory) before a library loads it. DeepSpeed reads its shards with
    weights_only=False, so a crafted checkpoint would run code there; here it is refused instead.
    Allowed: tensors and plain containers, numpy arrays (Accelerate's RNG states), DEEPSPEED_GLOBALS.
    Returns the number of files checked."""
    import importlib

    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    allowed = list(TORCH_SAFE_GLOBALS)
    for name in DEEPSPEED_GLOBALS:
        module, attr = name.rsplit(".", 1)
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except ImportError:  # no DeepSpeed here: its checkpoints cannot be loaded anyway
            pass
    files = sorted(p for p in Path(directory).rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file())
    for path in files:
        try:
            with torch.serialization.safe_globals(allowed):
                try:
                    torch.load(path, weights_only=True, mmap=True, map_location="cpu")
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
                    torch.load(path, weights_only=True, map_location="cpu")  # an old (non-zip) file cannot be mapped
        except Exception as e:
            if _is_torn(e):  # cut short (a kill mid-copy, a full disk): not a question of trust
                raise CheckpointError(f"{path} is torn ({_first_line(e)}); resume from an earlier checkpoint "
                                      "(train.resume_from=<its path>)") from None
            raise CheckpointError(f"refusing to load {path}: it is not plain tensor data ({_first_line(e)}). A checkpoint "
                                  "someone else made can run code when unpickled; if you made this one yourself "
                                  "with another DeepSpeed version, set train.trust_checkpoint=true") from None
    return len(files)


def load_accelerator_state(accelerator, checkpoint: Path) -> None:
    """Accelerate's state (weights, optimizer, RNG) of a checkpoint; a file that is torn or unreadable (safetensors,
    torch's zip reader, a short pickle) is a CheckpointError naming the directory, not a library traceback."""
    from safetensors import SafetensorError

    directory = Path(checkpoint) / ACCELERATOR_DIR
    try:
        accelerator.load_state(str(directory))
    except (SafetensorError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{directory} cannot be read ({_first_line(e)}): the checkpoint is torn; resume from "
                              "an earlier one (train.resume_from=<its path>)") from None
    except RuntimeError as e:  # torch's zip reader; a tensor of the wrong shape (another model's checkpoint)
        if "PytorchStreamReader" not in str(e) and "size mismatch" not in str(e):
            raise
        raise CheckpointError(f"{directory} cannot be loaded ({_first_line(e)}): the checkpoint is torn or belongs "
                              "to another model") from None


def _is_torn(e: BaseException) -> bool:
    """Whether a load error says the file ends early (torch's zip reader finds no central directory; a short pickle)."""
    return isinstance(e, EOFError) or "failed finding central directory" in str(e) or "file not fully covered" in str(e)


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of a per-step log up to `last_step` (a resumed run writes the later steps again);
    a torn last line (a run killed mid-write) goes too. Rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


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
        _publish(tmp, path)
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
    """Complete checkpoints (a real step-N directory holding its checksums.json, written last), oldest first."""
    if not Path(ckpt_root).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_root).iterdir()
             if (m := STEP_DIR.match(p.name)) and not p.is_symlink() and (p / CHECKSUMS).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume_from: str, ckpt_root: Path) -> Path | None:
    """`latest` -> this run's newest checkpoint, or None when it has none yet (a run stopped before its
    first checkpoint starts again from step 0); otherwise the given directory, which must be a checkpoint."""
    if resume_from == "latest":
        found = list_checkpoints(ckpt_root)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / TRAINER_STATE).exists() or not (path / ACCELERATOR_DIR).is_dir():
        raise FileNotFoundError(f"train.resume_from={resume_from!r} is not an r1kit checkpoint "
                                f"(expected {TRAINER_STATE} and {ACCELERATOR_DIR}/)")
    return path
