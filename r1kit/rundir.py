"""A run's directory and its ends: where a run resumes from, the directory as a session starts, and how a
run stops (signals, non-finite weights). Shared by GRPO (r1kit.run) and SFT (r1kit.sft)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from r1kit.checkpoint import (ACCELERATOR_DIR, CHECKSUMS, CheckpointError, list_checkpoints, load_trainer_state, resolve_resume,
                              truncate_jsonl, verify_checksums, verify_pickles)
from r1kit.config import Config, ConfigError
from r1kit.recipe import save_config
from r1kit.config_checks import changed_settings
from r1kit.logging import console


class RunStopped(Exception):
    """SIGINT/SIGTERM stopped the run after a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(RuntimeError):
    """Training produced NaN/inf that skipping a step cannot cure; the last checkpoint is intact."""


class RunCollapsed(RuntimeError):
    """Every reward was 0 for train.collapse_steps steps after the run had a learning signal (on_collapse=stop)."""


class StopSignals:
    """While training, SIGINT and SIGTERM ask the run to stop after the current step: it writes a
    checkpoint and exits with 130/143. A second signal stops at once, the old way."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum:  # the second one: give the signal back to its old handler
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum
        console.print(f"\n[yellow]{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
                      "(send it again to stop at once, without saving)[/]")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def run_stopped(cfg: Config, step: int, signum: int) -> RunStopped:
    """The stop after a signal, with the checkpoint it left and the command that resumes it (GRPO and SFT)."""
    command = " ".join(["r1kit", *(shlex.quote(a) for a in sys.argv[1:] if not a.startswith("train.resume_from=")),
                        "train.resume_from=latest"])
    return RunStopped(signum, f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint "
                              f"{cfg.run_dir / 'checkpoints' / f'step-{step}'}. Resume with: {command}")



@dataclass
class ResumePoint:
    directory: Path  # the checkpoint
    trainer_state: dict  # its trainer_state.pt, read once
    allowed_changes: list[str]  # settings this session changes that can take effect ('key: old -> new')


# What a run writes in its directory (trackers add their own folders); a fresh run starts only where none is.
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints", "final", "summary.json", "report.html")


def resume_point(cfg: Config) -> ResumePoint | None:
    """The checkpoint to resume from, or None for a fresh start; refuses to overwrite another run, to write
    through a symlink, and to resume from a checkpoint that fails its checks or with settings that would not
    take effect. Everything is checked here, and nothing is written."""
    run_dir = cfg.run_dir
    check_layout(cfg)
    if not cfg.train.resume_from:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if found:
            raise FileExistsError(f"run directory {run_dir} already holds a run ({', '.join(found)}); pick another "
                                  "name= or resume it with train.resume_from=latest")
        return None
    if not (run_dir / "config.yaml").exists():  # final/ or checkpoints/ that no r1kit run wrote here
        foreign = [name for name in RUN_FILES if (run_dir / name).exists()]
        if foreign:
            raise FileExistsError(f"{run_dir} holds {', '.join(foreign)} but no config.yaml: it was not written by an "
                                  "r1kit run, and resuming would overwrite it; pick another name=")
    resume_dir = resolve_resume(cfg.train.resume_from, run_dir / "checkpoints")
    complete = list_checkpoints(run_dir / "checkpoints")
    incomplete = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*") if p not in complete)
    if incomplete and cfg.train.resume_from == "latest":
        console.print(f"[yellow]ignoring {', '.join(incomplete)} in {run_dir / 'checkpoints'}: no {CHECKSUMS} "
                      "(cut short, or written by an older r1kit)[/]")
    if resume_dir is None:
        console.print(f"[yellow]{run_dir} holds no checkpoint yet: starting from step 0[/]")
        return None
    trainer_state = load_trainer_state(resume_dir)  # a torn or foreign file fails here, before anything is written
    if not cfg.train.trust_checkpoint:
        verify_pickles(resume_dir / ACCELERATOR_DIR)  # before DeepSpeed (weights_only=False) unpickles anything
    try:
        verify_checksums(resume_dir)
    except CheckpointError as e:
        earlier = [str(p) for p in complete if p.resolve() != resume_dir.resolve()]
        hint = f"resume from another one (train.resume_from={earlier[-1]})" if earlier else "no other checkpoint is left"
        raise CheckpointError(f"{e}; {hint}") from None
    refused, allowed = [], []
    saved_config = run_dir / "config.yaml"
    if saved_config.exists():
        refused, allowed = changed_settings(yaml.safe_load(saved_config.read_text()) or {}, cfg)
        if refused:
            raise ConfigError(f"resuming {run_dir} with settings that cannot take effect mid-run: "
                              + "; ".join(refused) + " (start a new run with another name= to change them)")
    return ResumePoint(resume_dir, trainer_state, allowed)


def check_layout(cfg: Config) -> None:
    """A run writes and deletes inside its own directory only: the run directory, and everything r1kit writes
    in it, must not be a symlink (a deletion or write through one lands elsewhere), checked before training so
    that the model is never lost at the end of a run."""
    run_dir = cfg.run_dir
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        what = f"a symlink to {os.readlink(run_dir)}" if run_dir.is_symlink() else "not a directory"
        raise FileExistsError(f"run directory {run_dir} is {what}: r1kit writes only inside a real directory under "
                              f"output_dir; pick another name=, or set output_dir to where the run should live")
    ckpt_root = run_dir / "checkpoints"
    inside = [run_dir / name for name in RUN_FILES] + (list(ckpt_root.iterdir()) if ckpt_root.is_dir() and
                                                       not ckpt_root.is_symlink() else [])
    for path in inside:
        if path.is_symlink():
            raise FileExistsError(f"{path} is a symlink (to {os.readlink(path)}): r1kit never writes or deletes "
                                  "through one; move it away, or pick another name=")


def prepare_run_dir(cfg: Config, resume: ResumePoint | None) -> None:
    """The run directory as this session starts: config.yaml (a resume that changes allowed settings keeps
    the previous file as config.before-step-N.yaml), and per-step logs cut back to the checkpoint's step."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    step = resume.trainer_state["run_state"]["step"] if resume else 0
    if resume is not None and resume.allowed_changes:
        os.replace(run_dir / "config.yaml", run_dir / f"config.before-step-{step}.yaml")
        console.print(f"resume changes {'; '.join(resume.allowed_changes)} "
                      f"(previous config: config.before-step-{step}.yaml)")
    save_config(cfg, run_dir / "config.yaml")
    for log in ("metrics.jsonl", "samples.jsonl", "evals.jsonl"):  # evals.jsonl: MetricsLogger.log_eval
        truncate_jsonl(run_dir / log, step)
