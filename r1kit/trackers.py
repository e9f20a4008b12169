"""Experiment trackers named by ``log.report_to`` (TRL's spelling): TensorBoard and Weights & Biases.

Each tracker receives the resolved config once (as hyperparameters), every step's numeric
metrics, and the logged samples as a table. Their packages are imported only when a recipe
names them; a missing one is an ImportError naming the r1kit extra that installs it.
W&B follows its own environment: ``WANDB_MODE=offline`` logs without an account into
RUN_DIR/wandb/ (``wandb sync`` uploads it later), ``WANDB_PROJECT`` names the project (default r1kit).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import yaml

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> (module to import, and) r1kit extra
SAMPLE_COLUMNS = ["step", "prompt", "answer", "completion", "reward"]


def require_log_packages(log_cfg) -> None:
    """Fail before any model is loaded when a tracker's package, or matplotlib for the report, is missing."""
    for name in log_cfg.report_to:
        if importlib.util.find_spec(EXTRAS[name]) is None:
            raise ImportError(_missing(name))
    if log_cfg.report and importlib.util.find_spec("matplotlib") is None:
        raise ImportError("log.report=true (the default) draws report.html with matplotlib: "
                          "pip install matplotlib, or set log.report=false")


def _missing(name: str) -> str:
    return f"log.report_to lists {name}, which needs the {EXTRAS[name]} package: pip install 'r1kit[{name}]'"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists and None become strings (hyperparameters are scalars)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


def sample_rows(step: int, records: list[dict]) -> list[list]:
    """One table row per completion of the samples.jsonl records of a step."""
    return [[step, r["prompt"], r["answer"], text, total]
            for r in records for text, total in zip(r["completions"], r["total"])]


class TensorBoardTracker:
    """Events in RUN_DIR/tensorboard: scalars, the config as HPARAMS and as YAML text, samples as a text table."""

    def __init__(self, run_dir: Path, config: dict | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as e:
            raise ImportError(_missing("tensorboard")) from e
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        if config:
            for summary in hparams(flatten(config), {}):  # experiment, session start and end: the HPARAMS tab
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_metrics(self, step: int, metrics: dict) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_samples(self, step: int, records: list[dict]) -> None:
        def cell(x) -> str:  # a markdown table cell: no pipes or line breaks of its own
            return str(x).replace("|", "\\|").replace("\n", "<br>")
        lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in sample_rows(step, records)]
        self.writer.add_text("samples", "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run named after the run directory, its files under RUN_DIR/wandb; samples as a wandb.Table."""

    def __init__(self, run_dir: Path, config: dict | None):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(_missing("wandb")) from e
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "r1kit"), name=run_dir.name, config=config,
                              dir=str(run_dir))

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, records: list[dict]) -> None:
        self.run.log({"samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=sample_rows(step, records))}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def open_trackers(names: list[str], run_dir: str | Path, config: dict | None) -> list:
    return [TRACKERS[name](Path(run_dir), config) for name in dict.fromkeys(names)]
