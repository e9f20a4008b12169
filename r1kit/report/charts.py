"""The report's charts: matplotlib figures drawn on the Agg canvas (no display, no pyplot state).

matplotlib is imported only here, inside `_new_figure`, so r1kit runs without it until a report is
asked for. One chart function serves one run and a comparison alike: with one run each metric
has its own colour; with several, each run has its colour and each metric its line style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from r1kit.report.runlog import PHASES, RunLog

EXTRA_HINT = "the report needs matplotlib (an r1kit dependency): pip install matplotlib"
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass
class Chart:
    name: str  # file stem of its PNG
    title: str
    png: Path | None = None  # None: nothing to draw (see notes)
    notes: list[str] = field(default_factory=list)  # what is missing from it


# (file stem, title, metric keys) of the plain line charts, in report order; reward and accuracy come first
LINE_CHARTS = [
    ("length", "Completion length (tokens): mean and max", ["completion/mean_length", "completion/max_length"]),
    ("truncated", "Share of completions cut at the length cap", ["completion/truncated_fraction"]),
    ("kl", "KL divergence to the reference", ["kl"]),
    ("entropy", "Entropy of sampled tokens", ["entropy"]),
    ("clip_fraction", "Clip fraction (tokens whose ratio was clipped)", ["clip_fraction"]),
    ("grad_norm", "Gradient norm (before clipping)", ["grad_norm"]),
    ("lr", "Learning rate", ["lr"]),
]


def smooth(values: list[float]) -> list[float]:
    """TensorBoard's debiased exponential moving average; the weight grows with the run's length
    (0 below 10 points: a short run is shown as it is)."""
    weight = max(0.0, min(0.95, 1 - 10 / max(len(values), 1)))
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last, norm = weight * last + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def _new_figure(title: str, height: float = 3.4):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(EXTRA_HINT) from e
    fig = Figure(figsize=(7.2, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    return fig, ax


def _steps_axis(ax) -> None:
    """x is the optimizer step: whole numbers only (a 3-step run would otherwise show 1.25, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _save(fig, chart: Chart, out_dir: Path) -> Chart:
    chart.png = out_dir / f"{chart.name}.png"
    fig.savefig(chart.png)
    return chart


def line_chart(runs: list[RunLog], name: str, title: str, keys: list[str], out_dir: Path,
               points: dict[str, tuple] | None = None) -> Chart:
    """Raw values faint, smoothed values solid, per (run, key); `points` adds unsmoothed markers
    (label -> per-run (steps, values) getter), e.g. held-out accuracy."""
    chart = Chart(name, title)
    fig, ax = _new_figure(title)
    drawn = 0
    for r, run in enumerate(runs):
        for k, key in enumerate(keys):
            steps, values = run.series(key)
            if not steps:
                chart.notes.append(f"{run.name}: no {key}" if len(runs) > 1 else f"no {key} in metrics.jsonl")
                continue
            colour, style = (_colour(r), LINE_STYLES[k % 4]) if len(runs) > 1 else (_colour(k), "-")
            label = f"{run.name}: {key}" if len(runs) > 1 else key
            width = 4 if k == 0 and len(keys) > 1 and len(runs) == 1 else 2  # the first (total, mean) stays
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1)  # visible under an equal second line
            ax.plot(steps, smooth(values), color=colour, linestyle=style, linewidth=width, label=label,
                    marker="o" if len(steps) == 1 else None)  # a line through one point draws nothing
            drawn += 1
        for p, (label, getter) in enumerate((points or {}).items()):
            steps, values = getter(run)
            if steps:
                colour = _colour(r) if len(runs) > 1 else _colour(len(keys) + p)
                ax.plot(steps, values, "o--", color=colour, markersize=6, linewidth=1,
                        label=f"{run.name}: {label}" if len(runs) > 1 else label)
                drawn += 1
    if not drawn:
        return chart
    _steps_axis(ax)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, chart, out_dir)


def reward_keys(runs: list[RunLog]) -> list[str]:
    """`reward` (the weighted total) and each function's mean, in name order."""
    per_function = sorted({k for run in runs for k in run.keys() if k.startswith("rewards/") and k.endswith("/mean")})
    return ["reward", *per_function]


def accuracy_keys(runs: list[RunLog]) -> list[str]:
    """Training accuracy: the mean of each reward function that scores correctness (accuracy, accuracy_reward)."""
    return [k for k in reward_keys(runs)[1:] if "accura" in k.split("/")[1]]


def phase_area_chart(run: RunLog, out_dir: Path) -> Chart:
    """Seconds per phase at each step, stacked: where a step's time goes, and how that changes."""
    chart = Chart("phases", "Time per step by phase (seconds, stacked)")
    series = {p: run.series(f"time/{p}") for p in PHASES}
    series = {p: s for p, s in series.items() if s[0]}
    if not series:
        chart.notes.append("no time/<phase> keys in metrics.jsonl")
        return chart
    steps = sorted({s for steps, _ in series.values() for s in steps})
    stacks = [[dict(zip(*series[p])).get(s, 0.0) for s in steps] for p in series]
    fig, ax = _new_figure(chart.title)
    colours = [_colour(i) for i in range(len(series))]
    if len(steps) == 1:  # an area over one step has no width: stack the step's phases as one bar
        bottoms = [sum(stack[0] for stack in stacks[:i]) for i in range(len(stacks))]
        ax.bar(steps, [stack[0] for stack in stacks], bottom=bottoms, color=colours, label=list(series), width=0.5)
    else:
        ax.stackplot(steps, stacks, labels=list(series), colors=colours, alpha=0.8)
    _steps_axis(ax)
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, chart, out_dir)


def phase_share_chart(runs: list[RunLog], out_dir: Path) -> Chart:
    """Each run's total time split by phase, as one 100% bar per run with the shares written on it."""
    chart = Chart("phase_share", "Share of training time by phase")
    totals = {run.name: run.phase_seconds() for run in runs}
    for name, seconds in totals.items():
        if not seconds:
            chart.notes.append(f"{name}: no time/<phase> keys in metrics.jsonl")
    totals = {name: seconds for name, seconds in totals.items() if seconds}
    if not totals:
        return chart
    phases = [p for p in (*PHASES, "other") if any(p in s for s in totals.values())]
    fig, ax = _new_figure(chart.title, height=1.2 + 0.55 * len(totals))
    for row, (name, seconds) in enumerate(totals.items()):
        left, whole = 0.0, sum(seconds.values())
        for i, phase in enumerate(phases):
            share = seconds.get(phase, 0.0) / whole
            ax.barh(row, share, left=left, color=_colour(i), label=phase if row == 0 else None)
            if share >= 0.06:
                ax.text(left + share / 2, row, f"{phase}\n{share:.0%}", ha="center", va="center", fontsize=7)
            left += share
    ax.set_yticks(range(len(totals)), list(totals))
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(fontsize=7, ncols=len(phases), loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return _save(fig, chart, out_dir)


def passk_chart(ks: list[int], values: list[float], out_dir: Path, name: str = "passk") -> Chart:
    """pass@k against k (log2 axis): how much sampling more helps."""
    chart = Chart(name, "pass@k on the evaluated problems")
    if not ks:
        chart.notes.append("no pass@k: the evaluation was greedy only (--n 0)")
        return chart
    fig, ax = _new_figure(chart.title, height=3.0)
    ax.plot(ks, values, "o-", color=_colour(0), linewidth=2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylim(0, 1.02)
    return _save(fig, chart, out_dir)
