"""The page `r1kit eval` writes beside its per-problem jsonl: the metrics, pass@k against k, and
the problems the model did worst and best on (what to read first when a score surprises)."""

from __future__ import annotations

from pathlib import Path

from r1kit.report.charts import passk_chart
from r1kit.report.page import charts_section, document, esc, missing_section, percent, table

SHARE_KEYS = ("greedy_accuracy", "sampled_pass1", "truncated", "reasoning_share", "no_answer")


def item_score(item: dict) -> float:
    """How well one problem went: its share of correct samples, or greedy correctness without samples."""
    sampled = item.get("sampled_correct")
    return sum(sampled) / len(sampled) if sampled else float(item.get("correct", 0.0))


def _items_table(items: list[dict]) -> str:
    rows = []
    for item in items:
        sampled = item.get("sampled_correct")
        rows.append(f"<tr><td>{esc(item.get('index'))}</td><td>{esc(item.get('question'))}</td>"
                    f"<td>{esc(item.get('answer'))}</td><td>{esc(item.get('extracted'))}</td>"
                    f"<td>{'yes' if item.get('correct') else 'no'}</td>"
                    f"<td>{'n/a' if not sampled else percent(sum(sampled) / len(sampled))}</td>"
                    f"<td><pre>{esc(item.get('completion', ''))}</pre></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#", "question", "gold", "greedy answer", "greedy correct",
                                              "samples correct", "greedy completion"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def write_eval_report(items_path: str | Path, summary: dict, items: list[dict], show: int = 5) -> Path:
    """ITEMS.report.html (and ITEMS.passk.png) beside the per-problem jsonl; returns the page's path."""
    items_path = Path(items_path)
    ks = sorted(int(k.split("@")[1]) for k in summary if k.startswith("pass@"))
    chart = passk_chart(ks, [summary[f"pass@{k}"] for k in ks], items_path.parent, name=f"{items_path.stem}.passk")
    metrics = [[k, percent(v) if k in SHARE_KEYS or k.startswith(("pass@", "maj@")) else v]
               for k, v in summary.items() if isinstance(v, (int, float, str))]
    ranked = sorted(items, key=item_score)  # stable: equal scores keep the file's order
    worst, best = ranked[:show], ranked[::-1][:show]
    sections = [table(["metric", "value"], metrics), missing_section(chart.notes), charts_section([chart]),
                f"<h2>Worst {len(worst)} problems</h2>{_items_table(worst)}",
                f"<h2>Best {len(best)} problems</h2>{_items_table(best)}"]
    out = items_path.with_suffix(".report.html")
    title = f"r1kit eval: {summary.get('model', '?')} on {summary.get('benchmark', '?')}"
    out.write_text(document(title, str(items_path.resolve()), sections))
    return out
