"""HTML of the reports: one self-contained file (images embedded as base64 PNG, inline CSS, no script)."""

from __future__ import annotations

import base64
import html
import time

from r1kit.report.charts import Chart
from r1kit.report.runlog import RunLog

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1500px; }
h1 { margin-bottom: 4px; } .sub { color: #666; margin-top: 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 16px; }
.chart img { width: 100%; max-width: 780px; border: 1px solid #ddd; }
.missing { background: #fff4e5; border-left: 4px solid #f0a020; padding: 8px 16px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
.samples { display: grid; grid-template-columns: repeat(3, 1fr); gap: 12px; }
.samples pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: 6px; margin: 4px 0; }
.good { color: #17803d; } .bad { color: #b42318; }
"""


def esc(text) -> str:
    return html.escape(str(text))


def document(title: str, subtitle: str, sections: list[str]) -> str:
    made = time.strftime("%Y-%m-%d %H:%M")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{esc(title)}</h1><p class='sub'>{esc(subtitle)} · generated {made}</p>"
            + "\n".join(s for s in sections if s) + "</body></html>\n")


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def missing_section(notes: list[str]) -> str:
    """What the report could not show and why; absent when nothing is missing."""
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in dict.fromkeys(notes))
    return f"<div class='missing'><h3>Not shown</h3><ul>{items}</ul></div>"


def charts_section(charts: list[Chart]) -> str:
    figures = []
    for chart in charts:
        if chart.png is None:
            continue
        data = base64.b64encode(chart.png.read_bytes()).decode()
        figures.append(f"<div class='chart' id='{esc(chart.name)}'><img alt='{esc(chart.title)}' "
                       f"src='data:image/png;base64,{data}'></div>")
    if not figures:
        return "<h2>Charts</h2><p>No chart could be drawn (see “Not shown”).</p>"
    return "<h2>Charts</h2><div class='grid'>" + "".join(figures) + "</div>"


def percent(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def samples_section(run: RunLog, per_step: int = 4) -> str:
    """The first, middle and last logged step's first prompt and completions with their rewards, side by side:
    how the answers change over training."""
    if not run.samples:
        return ""
    picks = {0: "start", len(run.samples) // 2: "middle", len(run.samples) - 1: "end"}
    columns = []
    for index, label in picks.items():
        record = run.samples[index]
        completions = record.get("completions", [])[:per_step]
        totals = record.get("total", [])
        per_function = record.get("rewards", {})
        cells = []
        for j, text in enumerate(completions):
            parts = [f"{name} {values[j]}" for name, values in per_function.items() if j < len(values)]
            total = totals[j] if j < len(totals) else None
            tone = "good" if isinstance(total, (int, float)) and total > 0 else "bad"
            cells.append(f"<div><b class='{tone}'>reward {esc(total)}</b> ({esc(', '.join(parts))})"
                         f"<pre>{esc(text)}</pre></div>")
        columns.append(f"<div><h3>{label}: step {esc(record.get('step', '?'))}</h3>"
                       f"<p><b>prompt</b></p><pre>{esc(record.get('prompt', ''))}</pre>"
                       f"<p><b>answer</b> {esc(record.get('answer', ''))}</p>{''.join(cells)}</div>")
    return ("<h2>Sample completions: start, middle, end</h2>"
            f"<p>{per_step} completions of the first prompt of each step (samples.jsonl).</p>"
            f"<div class='samples'>{''.join(columns)}</div>")
