"""Read what a run directory holds, tolerating what a killed or foreign run leaves behind.

A report must render whatever is there: a run killed mid-write leaves a half line at the end of
metrics.jsonl, a run that crashed at set-up has no metrics at all, an older run lacks newer keys.
Every such gap becomes a line in `RunLog.problems`, which the report prints, instead of an error.
A path that is not a directory, or a directory that holds no run (no config.yaml, metrics.jsonl or
summary.json, no TRL trainer_state.json), is still an error: there is nothing to report on, and the
report is not written into someone else's directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PHASES = ("generate", "generate_wait", "reward", "reference", "old_logprobs", "update", "weight_sync")  # trainer.py and
# producer.py timer names (generate_wait: the trainer waiting for a batch from the generation worker)


@dataclass
class RunLog:
    name: str
    path: Path
    metrics: list[dict] = field(default_factory=list)  # one dict per logged step, in file order
    samples: list[dict] = field(default_factory=list)  # samples.jsonl records
    summary: dict = field(default_factory=dict)  # summary.json, when the run finished
    evals: list[dict] = field(default_factory=list)  # evals.jsonl: each held-out evaluation as it finished
    problems: list[str] = field(default_factory=list)  # what is missing or unreadable, one sentence each

    def keys(self) -> set[str]:
        return {k for row in self.metrics for k, v in row.items() if isinstance(v, (int, float))}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, skipping steps where it is absent or not finite (logged as "NaN", ...)."""
        steps, values = [], []
        for row in self.metrics:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(row.get("step"), int):
                steps.append(row["step"])
                values.append(float(value))
        return steps, values

    def step_range(self) -> tuple[int, int] | None:
        steps = [row["step"] for row in self.metrics if isinstance(row.get("step"), int)]
        return (min(steps), max(steps)) if steps else None

    def heldout_accuracy(self) -> tuple[list[int], list[float]]:
        """Held-out greedy accuracy per step: summary.json's history (it has step 0, before training)
        when the run finished, else the eval/ keys of metrics.jsonl."""
        history = self.summary.get("eval_history")
        if history:
            points = [(int(s), float(a)) for s, a in history if a is not None]
            return [s for s, _ in points], [a for _, a in points]
        by_step = {e["step"]: float(e["eval/greedy_accuracy"]) for e in self.evals  # a stopped run: its evals.jsonl
                   if isinstance(e.get("step"), int) and isinstance(e.get("eval/greedy_accuracy"), (int, float))}
        if by_step:
            return sorted(by_step), [by_step[s] for s in sorted(by_step)]
        return self.series("eval/greedy_accuracy")

    def accuracy_before_after(self) -> tuple[float | None, float | None, str]:
        """Held-out greedy accuracy before and after training, and a note: summary.json's when the run finished,
        else a stopped run's first evaluation (step 0) and its latest one, "(step N, stopped)"."""
        if self.summary:
            return self.summary.get("accuracy_before"), self.summary.get("accuracy_after"), ""
        steps, values = self.heldout_accuracy()
        before = values[0] if steps and steps[0] == 0 else None
        if steps and steps[-1] > 0:
            return before, values[-1], f" (step {steps[-1]}, stopped)"
        return before, None, " (stopped)" if before is not None else ""

    def phase_seconds(self) -> dict[str, float]:
        """Total seconds per phase over the run, plus 'other' (step time not inside a named phase)."""
        totals = {p: sum(self.series(f"time/{p}")[1]) for p in PHASES}
        totals = {p: s for p, s in totals.items() if s > 0}
        step_total = sum(self.series("time/step")[1])
        if step_total > sum(totals.values()):
            totals["other"] = step_total - sum(totals.values())
        return totals


RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")  # an r1kit run writes config.yaml before anything


def read_run(path: str | Path) -> RunLog:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a run directory")
    run = RunLog(name=path.resolve().name, path=path)
    metrics_file = path / "metrics.jsonl"
    trl_state = _trl_state_file(path)
    if trl_state is None and not any((path / name).is_file() for name in RUN_FILES):  # write nothing into it
        raise FileNotFoundError(f"{path} is not a run directory: it has none of {', '.join(RUN_FILES)} (an r1kit run) "
                                "and no trainer_state.json (a TRL run)")
    if not metrics_file.is_file() and trl_state is not None:
        return _read_trl_run(run, trl_state)
    if metrics_file.is_file():
        run.metrics = _last_per_step(_read_jsonl(metrics_file, run.problems), metrics_file, run.problems)
        if not run.metrics:
            run.problems.append(f"{metrics_file} has no complete step yet: no curves")
    else:
        run.problems.append(f"{metrics_file} does not exist: no curves (did the run start training?)")
    if (path / "evals.jsonl").is_file():
        run.evals = _read_jsonl(path / "evals.jsonl", run.problems)
    samples_file = path / "samples.jsonl"
    if samples_file.is_file():
        run.samples = _read_jsonl(samples_file, run.problems)
    else:
        run.problems.append(f"{samples_file} does not exist: no sample completions (log.samples_every=0?)")
    summary_file = path / "summary.json"
    if summary_file.is_file():
        try:
            run.summary = json.loads(summary_file.read_text())
        except json.JSONDecodeError as e:
            run.problems.append(f"{summary_file} is not valid JSON ({e}): before/after accuracy not shown")
    else:
        run.problems.append(f"{summary_file} does not exist: the run has not finished (or was stopped)")
    return run


# TRL's GRPOTrainer log names -> r1kit's, for the metrics both log (the rest keep their names)
TRL_NAMES = {"completions/mean_length": "completion/mean_length", "completions/max_length": "completion/max_length",
             "completions/clipped_ratio": "completion/truncated_fraction", "clip_ratio/region_mean": "clip_fraction",
             "learning_rate": "lr"}


def _trl_state_file(path: Path) -> Path | None:
    """A TRL (transformers Trainer) output directory's trainer_state.json, else its latest checkpoint's."""
    if (path / "trainer_state.json").is_file():
        return path / "trainer_state.json"
    checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def _read_trl_run(run: RunLog, state_file: Path) -> RunLog:
    """A TRL run's log_history as metrics rows (entries of one step merged, names mapped), so
    `r1kit report runs/ours trl-output/` overlays the two."""
    try:
        history = json.loads(state_file.read_text()).get("log_history", [])
    except json.JSONDecodeError as e:
        run.problems.append(f"{state_file} is not valid JSON ({e}): no curves")
        return run
    by_step: dict[int, dict] = {}
    for entry in history:
        if isinstance(entry.get("step"), int):
            by_step.setdefault(entry["step"], {}).update({TRL_NAMES.get(k, k): v for k, v in entry.items()})
    run.metrics = [by_step[step] for step in sorted(by_step)]
    runtime = next((e["train_runtime"] for e in history if "train_runtime" in e), None)
    run.summary = {"wall_seconds": runtime} if runtime is not None else {}
    run.problems.append(f"{state_file}: a TRL log (no time per phase, no samples, no held-out accuracy)")
    return run


def _read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    """The complete JSON objects of a jsonl file; a torn last line (killed mid-write) and unreadable
    lines are skipped and named in `problems`."""
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            where = "the last line" if number == len(lines) else f"line {number}"
            problems.append(f"{path}: {where} is not complete JSON (run stopped mid-write?); skipped")
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            problems.append(f"{path}: line {number} is not a JSON object; skipped")
    return records


def _last_per_step(rows: list[dict], path: Path, problems: list[str]) -> list[dict]:
    """One row per step, the last one logged: a run resumed from a checkpoint logs again the steps it had
    done after that checkpoint, and those later values are the ones the final model descends from."""
    by_step: dict = {}
    for row in rows:
        by_step[row.get("step")] = row
    repeated = len(rows) - len(by_step)
    if repeated:
        problems.append(f"{path}: {repeated} step(s) logged more than once (a resumed run repeats the steps after "
                        "its checkpoint); the last values are shown")
    return sorted(by_step.values(), key=lambda r: r["step"] if isinstance(r.get("step"), int) else -1)
