"""Metrics sinks (console, metrics.jsonl, trackers), phase timers, the progress bar and the final summary.

Every step's metrics are one flat dict of floats. `MetricsLogger.log` appends it to
metrics.jsonl (flushed each line, so a crash loses nothing already logged) and forwards it to the
trackers of ``log.report_to`` (r1kit.trackers), imported only when the config names them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from r1kit.trackers import open_trackers

console = Console(soft_wrap=True)  # in a log file (not a terminal) a long line stays one line, not cut at 80


class PhaseTimer:
    """Accumulates wall seconds per named phase: ``with timer("generate"): ...``; `pop()` returns and resets.

    sync: called as each phase ends, before the clock is read. On a GPU it is torch.cuda.synchronize: kernels
    run after the Python that queued them returns (the optimizer step's, say), and without it their time
    would be counted in whichever phase next waits for the GPU."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.seconds: dict[str, float] = {}
        self.sync = sync

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out, self.seconds = {f"time/{k}": v for k, v in self.seconds.items()}, {}
        return out


def _nonfinite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


EVALS_FILE = "evals.jsonl"  # a run's held-out evaluations, one line each: {"step", "when", "eval/...": ...}


class MetricsLogger:
    """metrics.jsonl and samples.jsonl of a run, and the trackers of `log.report_to` (r1kit.trackers)."""

    def __init__(self, run_dir: Path, log_cfg, config_dict: dict | None = None, resume: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.samples_path = Path(run_dir) / "samples.jsonl"
        self.evals_path = Path(run_dir) / EVALS_FILE
        self.file = self.path.open("a" if resume else "w")
        if not resume:
            self.evals_path.unlink(missing_ok=True)
        self.trackers = open_trackers(log_cfg.report_to, run_dir, config_dict)

    def log(self, step: int, metrics: dict) -> None:
        # JSON has no NaN/inf: write them as the strings "NaN", "Infinity", "-Infinity" (JavaScript's names),
        # so a non-finite value stays visible instead of looking like a missing one (null)
        clean = {k: (_nonfinite_name(v) if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        self.file.flush()
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log_metrics(step, numeric)

    def log_eval(self, step: int, when: str, metrics: dict) -> None:
        """One held-out evaluation (before, during, after) as it finishes, so a stopped run's report still has it."""
        append_jsonl(self.evals_path, {"step": step, "when": when, **{k: v for k, v in metrics.items()
                                                                      if not isinstance(v, float) or math.isfinite(v)}})

    def log_samples(self, step: int, records: list[dict]) -> None:
        """samples.jsonl records of one step (prompt, answer, completions, rewards, total, ...)."""
        for record in records:
            append_jsonl(self.samples_path, record)
        for tracker in self.trackers:
            tracker.log_samples(step, records)

    def close(self) -> None:
        self.file.close()
        for tracker in self.trackers:
            tracker.close()


def append_jsonl(path: Path, record: dict) -> None:
    with Path(path).open("a") as f:
        f.write(json.dumps(record) + "\n")


def progress_bar(enabled: bool, out: Console | None = None):
    """One live bar in a terminal; in a log (CI, `| tee`: not a terminal) plain lines instead, since a
    live display there prints every redraw. Narrow terminals drop the bar and the estimate, and the
    metrics text is cut with an ellipsis rather than wrapped (a wrapped live line garbles on redraw)."""
    out = out or console
    if not out.is_terminal:
        return LineProgress(out, enabled)
    wide = out.width >= 100
    fixed = 58 if wide else 20  # what the other columns take, so the metrics text is the one that gives way
    info = TextColumn("{task.fields[info]}",
                      table_column=Column(no_wrap=True, overflow="ellipsis", max_width=max(out.width - fixed, 8)))
    if wide:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), info]
    else:
        columns = [TextColumn("[bold]{task.description}"), MofNCompleteColumn(), TimeElapsedColumn(), info]
    return Progress(*columns, console=out, disable=not enabled, transient=False, expand=False)


class LineProgress:
    """The progress bar's interface (add_task, update, a context manager) as plain lines: the first
    and last step, and otherwise at most one line per `every_seconds`."""

    def __init__(self, out: Console, enabled: bool, every_seconds: float = 10.0):
        self.out, self.enabled, self.every_seconds = out, enabled, every_seconds
        self.tasks: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: int, completed: int = 0, info: str = "") -> int:
        self.tasks.append({"description": description, "total": total, "start": time.monotonic(),
                           "done_at_start": completed, "completed": completed, "printed": None})
        return len(self.tasks) - 1

    def update(self, task_id: int, completed: int | None = None, advance: int = 0, info: str = "") -> None:
        task, now = self.tasks[task_id], time.monotonic()
        completed = task["completed"] = (task["completed"] if completed is None else completed) + advance
        due = task["printed"] is None or now - task["printed"] >= self.every_seconds or completed >= task["total"]
        if not (self.enabled and due):
            return
        task["printed"] = now
        elapsed, done = now - task["start"], completed - task["done_at_start"]
        left = elapsed / done * (task["total"] - completed) if done > 0 else None
        eta = "" if left is None else f", ~{_clock(left)} left"
        self.out.print(f"{task['description']} {completed}/{task['total']} ({_clock(elapsed)} elapsed{eta})  {info}",
                       markup=False, highlight=False, soft_wrap=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def quiet_library_progress() -> None:
    """No third-party progress bars ("Loading weights", "Writing model shards", downloads) inside our
    output: transformers and huggingface_hub draw them with tqdm through their own switches."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    disable_progress_bars()
    quiet_tied_head_notice()


class _TiedHeadSaveNotice(logging.Filter):
    """Accelerate says "Removed shared tensor {'lm_head.weight'} while saving" on every checkpoint of a model whose
    output head is tied to its embedding (SmolLM2, Qwen2.5-0.5B): that head is the embedding, saved once and tied
    again on load (resumes are tested bitwise). Any other shared tensor still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor {'lm_head.weight'} while saving" not in record.getMessage()  # after a [RANK n]


def quiet_tied_head_notice() -> None:
    logger = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedHeadSaveNotice) for f in logger.filters):
        logger.addFilter(_TiedHeadSaveNotice())


def duration(seconds: float | None) -> str:
    """Wall time as a person reads it: "42 s" under two minutes, "12.5 min" under two hours, else "3.2 h"."""
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def print_run_summary(summary: dict, phase_shares: dict[str, float], report: Path | None) -> None:
    """The end of a run in a few lines: accuracy before -> after, wall time, where time went, where to look."""
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    s = summary
    console.print(f"\n[bold]done[/]: {s['steps']} steps in {duration(s['wall_seconds'])}; held-out greedy accuracy "
                  f"{pct(s['accuracy_before'])} -> [bold]{pct(s['accuracy_after'])}[/]")
    if s["reasoning_share_after"] is not None and s["reasoning_share_before"] is not None:
        console.print(f"answers that show reasoning: {pct(s['reasoning_share_before'])} -> "
                      f"{pct(s['reasoning_share_after'])}")
    if phase_shares:
        console.print("time: " + ", ".join(f"{phase} {share:.0%}" for phase, share in phase_shares.items()
                                           if share >= 0.005))
    # paths are never folded across lines (soft_wrap): a person copies them
    console.print(f"run directory: {s['run_dir']}  (metrics.jsonl, samples.jsonl, summary.json, final/)", soft_wrap=True)
    console.print(f"report: {report}" if report else "report: off (log.report=false); `r1kit report RUN_DIR` writes it",
                  soft_wrap=True)


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
