"""`r1kit report`: what a run did, as one self-contained HTML page with charts.

`write_report(run_dir)` reads only files of the run directory (metrics.jsonl, samples.jsonl,
summary.json), so it runs after training, on a finished, stopped or crashed run, and on rank 0
of a multi-process run. It writes RUN_DIR/report.html and the charts as RUN_DIR/report/*.png.
`write_comparison(run_dirs, out_dir)` overlays several runs' curves in one page.
Whatever a run lacks is listed under "Not shown" instead of failing the report.
"""

from __future__ import annotations

from pathlib import Path

from r1kit.logging import duration
from r1kit.report.charts import (LINE_CHARTS, Chart, accuracy_keys, line_chart, phase_area_chart, phase_share_chart,
                                 reward_keys)
from r1kit.report.page import charts_section, document, missing_section, percent, samples_section, table
from r1kit.report.runlog import RunLog, read_run

__all__ = ["write_report", "write_comparison", "phase_shares", "read_run"]


def phase_shares(run: RunLog) -> dict[str, float]:
    """Share of the run's step time per phase (sums to 1), largest first; {} without timings."""
    seconds = run.phase_seconds()
    whole = sum(seconds.values())
    return {p: s / whole for p, s in sorted(seconds.items(), key=lambda kv: -kv[1])} if whole else {}


def _charts(runs: list[RunLog], out_dir: Path) -> list[Chart]:
    """Every chart of the report, for one run or overlaid for several."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):  # a chart that has no data this time must not linger from the last report
        stale.unlink()
    heldout = {"held-out greedy accuracy": RunLog.heldout_accuracy}
    charts = [line_chart(runs, "reward", "Reward: weighted total and per function", reward_keys(runs), out_dir),
              line_chart(runs, "accuracy", "Accuracy: training samples (smoothed) and held-out greedy (points)",
                         accuracy_keys(runs), out_dir, points=heldout)]
    charts += [line_chart(runs, name, title, keys, out_dir) for name, title, keys in LINE_CHARTS]
    if len(runs) == 1:
        charts.append(phase_area_chart(runs[0], out_dir))
    else:
        charts.append(line_chart(runs, "step_time", "Seconds per step", ["time/step"], out_dir))
    charts.append(phase_share_chart(runs, out_dir))
    return charts


def _notes(runs: list[RunLog], charts: list[Chart]) -> list[str]:
    notes = [p if len(runs) == 1 else f"{run.name}: {p}" for run in runs for p in run.problems]
    for chart in charts:
        notes += [f"{chart.title}: {n}" for n in chart.notes]
        if chart.png is None and not chart.notes:
            notes.append(f"{chart.title}: no data")
    return notes


def _overview(run: RunLog) -> list:
    s, span, shares = run.summary, run.step_range(), phase_shares(run)
    before, after, note = run.accuracy_before_after()
    return [run.name, "none" if span is None else f"{span[0]}–{span[1]}",
            f"{percent(before)} → {percent(after)}{note}", duration(s.get("wall_seconds")),
            ", ".join(f"{p} {v:.0%}" for p, v in shares.items() if v >= 0.005) or "n/a"]


OVERVIEW_HEADER = ["run", "steps", "held-out greedy accuracy before → after", "wall time", "time by phase"]


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report.html (and RUN_DIR/report/*.png) for one run; returns the HTML's path."""
    run = read_run(run_dir)
    charts = _charts([run], run.path / "report")
    sections = [table(OVERVIEW_HEADER, [_overview(run)]), missing_section(_notes([run], charts)),
                charts_section(charts), samples_section(run)]
    out = run.path / "report.html"
    out.write_text(document(f"r1kit run: {run.name}", str(run.path.resolve()), sections))
    return out


def default_comparison_dir(run_dirs: list[str | Path]) -> Path:
    """Where `r1kit report A B` writes: beside the first run, `compare-A-B/` (names cut to stay short)."""
    names = "-".join(Path(d).resolve().name for d in run_dirs)
    return Path(run_dirs[0]).resolve().parent / f"compare-{names[:80]}"


def write_comparison(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> Path:
    """OUT_DIR/report.html overlaying every run's curves; runs of different lengths or metric sets
    are drawn where they have data and the gaps are listed."""
    runs = [read_run(d) for d in run_dirs]
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # two runs called "final" from different places: tell them apart
        for i, run in enumerate(runs):
            run.name = f"{i + 1}:{run.name}"
    out_dir = Path(out_dir) if out_dir else default_comparison_dir(run_dirs)
    charts = _charts(runs, out_dir / "report")
    spans = {run.step_range() for run in runs}
    notes = _notes(runs, charts)
    if len(spans) > 1:
        notes.insert(0, "the runs cover different steps: " + "; ".join(
            f"{r.name} {'none' if r.step_range() is None else '%d–%d' % r.step_range()}" for r in runs))
    sections = [table(OVERVIEW_HEADER, [_overview(run) for run in runs]), missing_section(notes),
                charts_section(charts)]
    out = out_dir / "report.html"
    out.write_text(document("r1kit comparison: " + " vs ".join(r.name for r in runs),
                            ", ".join(str(r.path.resolve()) for r in runs), sections))
    return out
