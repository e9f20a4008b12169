"""Metrics sinks (console, metrics.jsonl, TensorBoard, W&B), phase timers and the live progress bar.

Every step's metrics are one flat dict of floats. `MetricsLogger.log` appends it to
metrics.jsonl (flushed each line, so a crash loses nothing already logged) and forwards it to the
optional sinks, which are imported only when the config asks for them.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()


class PhaseTimer:
    """Accumulates wall seconds per named phase: ``with timer("generate"): ...``; `pop()` returns and resets."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = {f"time/{k}": v for k, v in self.seconds.items()}, {}
        return out


class MetricsLogger:
    def __init__(self, run_dir: Path, log_cfg, config_dict: dict | None = None, resume: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = self.path.open("a" if resume else "w")
        self.tb = self.wandb = None
        if log_cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("log.tensorboard=true needs the tensorboard package: pip install tensorboard") from e
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if log_cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("log.wandb=true needs the wandb package: pip install wandb") from e
            self.wandb = wandb.init(project="r1kit", name=Path(run_dir).name, config=config_dict, dir=str(run_dir))

    def log(self, step: int, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def append_jsonl(path: Path, record: dict) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")


def progress_bar(enabled: bool) -> Progress:
    """A rich progress bar; its description carries the latest step metrics."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, disable=not enabled, transient=False)


def short_name(key: str) -> str:
    """`rewards/accuracy/mean` -> `accuracy`, `time/generate` -> `t_generate`, `eval/greedy_accuracy` -> `greedy_accuracy`."""
    parts = key.split("/")
    if parts[0] == "rewards" and len(parts) == 3:
        return parts[1] if parts[2] == "mean" else f"{parts[1]}_{parts[2]}"
    if parts[0] == "time":
        return f"t_{parts[-1]}"
    return parts[-1]


def format_metrics(metrics: dict, keys: list[str]) -> str:
    """One compact line of the chosen metrics that are present."""
    return "  ".join(f"{short_name(k)} {metrics[k]:.3g}" for k in keys if isinstance(metrics.get(k), (int, float)))
