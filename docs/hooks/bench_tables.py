"""Markdown tables of the measured results in benchmarks/results/*.json (the docs never type a number by hand).

Each results file belongs to a kind, named by the file's stem up to its first '-' (``vs_trl-tiny.json`` is a
``vs_trl`` result); every kind has one renderer here, and a results file of a kind without one is an error, so
a new benchmark cannot go undocumented. Each table ends with where it was measured: the machine, the versions
and the date, as the JSON states them; a JSON without a date is dated by the commit that last changed it
(said so in the text), or "date not recorded" outside a git checkout.

    python docs/hooks/bench_tables.py            # print every table (what docs/reference/benchmarks.md holds)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def kind_of(path: Path) -> str:
    """The benchmark a results file comes from: the longest renderer name its stem is, or starts with followed
    by '-' or '_' (``vs_trl-tiny`` -> vs_trl, ``memory_vs_trl`` -> memory, ``sft_packing`` -> sft_packing)."""
    stem = path.stem
    kinds = [k for k in RENDERERS if stem == k or stem.startswith((k + "-", k + "_"))]
    if not kinds:
        raise KeyError(f"{path}: no table for results of kind {stem.split('-')[0]!r} in docs/hooks/bench_tables.py "
                       f"(kinds: {sorted(RENDERERS)})")
    return max(kinds, key=len)


def result_files(kind: str | None = None, results: Path = RESULTS) -> list[Path]:
    files = sorted(results.glob("*.json"))
    return [f for f in files if kind is None or kind_of(f) == kind]


def measured_date(path: Path) -> str:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and data.get("date"):
        return str(data["date"])
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], cwd=path.parent,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "date not recorded"
    return f"committed {out.stdout.strip()}" if out.returncode == 0 and out.stdout.strip() else "date not recorded"


def _machine(data: dict) -> str:
    """The machine and versions a results file states, in one line."""
    parts = []
    machine = data.get("machine") or data.get("device")
    if isinstance(machine, dict):
        load = machine.get("load_average")
        parts.append(", ".join(f"{k} {v}" for k, v in machine.items() if k != "load_average")
                     + (f", load average {load[0]:.1f}" if load else ""))
    elif machine:
        parts.append(str(machine))
    for key in ("cpus", "cpu_cores"):
        if key in data:
            parts.append(f"{data[key]} cores")
    for key in ("torch_threads", "threads", "server_threads"):
        if isinstance(data.get(key), int):
            parts.append(f"{key.replace('_', ' ')} {data[key]}")
    versions = dict(data.get("versions") or {})
    versions.update({k: data[k] for k in ("torch", "transformers", "trl", "vllm") if isinstance(data.get(k), str)})
    if versions:
        parts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    return "; ".join(parts) or "machine not recorded"


def provenance(path: Path) -> str:
    data = json.loads(path.read_text())
    return f"`benchmarks/results/{path.name}`: {_machine(data)}; {measured_date(path)}."


def table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return "–" if value is None else str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x) -> str | None:
    return None if x is None else f"{100 * x:.1f}%"


def num(x, digits: int = 2) -> str | None:
    return None if x is None else f"{x:,.{digits}f}"


def ms(seconds) -> str | None:
    return None if seconds is None else f"{1000 * seconds:,.0f}"


# ---------------------------------------------------------------- one renderer per kind


def vs_trl(data: dict) -> str:
    rows = []
    for e in data["entries"]:
        r, t = e["r1kit"], e["trl"]
        rounds = e.get("speedup_rounds")
        speedup = f"**{e['speedup']:.2f}x**" + (f" ({min(rounds):.2f}-{max(rounds):.2f}x over {len(rounds)} rounds)"
                                                if rounds else "")
        rows.append([e["config"], e["dtype"], "on" if e["spec"].get("gradient_checkpointing") else "off",
                     f"{e['spec']['prompts']} x {e['spec']['generations']}, {e['spec']['max_new_tokens']} tokens",
                     num(r["s_per_step"], 3), num(t["s_per_step"], 3), speedup, num(r["peak_mib"], 0),
                     num(t["peak_mib"], 0), f"{e['memory_ratio']:.2f}x", f"{pct(r.get('mfu'))} / {pct(t.get('mfu'))}"])
    return table(["config", "dtype", "checkpointing", "prompts x G, new tokens", "r1kit s/step", "TRL s/step",
                  "speed-up", "r1kit peak MiB", "TRL peak MiB", "memory ratio", "nominal MFU r1kit / TRL"], rows)


def learning(data: dict) -> str:
    rows = [[r["seed"], pct(r["accuracy_before"]), pct(r["accuracy_after"]),
             f"{100 * (r['accuracy_after'] - r['accuracy_before']):+.1f}", r["steps"], num(r["wall_seconds"] / 60, 1)]
            for r in data["runs"]]
    m = data["mean"]
    rows.append(["mean", pct(m["accuracy_before"]), pct(m["accuracy_after"]),
                 f"{100 * (m['accuracy_after'] - m['accuracy_before']):+.1f}", "", num(m["wall_seconds"] / 60, 1)])
    return table(["seed", "held-out greedy before", "after", "gain (points)", "steps", "minutes"], rows)


def generation(data: dict) -> str:
    rows = [[r["model"], r["layout"], num(r["tokens_per_s"], 0), ms(r["weight_sync_s"]), num(r["startup_s"], 1)]
            for r in data["rows"]]
    return f"Workload: {data['workload']}.\n\n" + table(
        ["model", "layout", "tokens/s", "weight sync (ms)", "start-up (s)"], rows)


def memory(data: dict) -> str:
    trl = {r["layout"]: r for r in data.get("trl_rows", [])}
    header = ["layout", "processes", "r1kit peak GB per process", "r1kit s/step"]
    rows = [[r["layout"], r["processes"], r["peak_gb_per_process"], r["step_seconds"]] for r in data["rows"]]
    if trl:
        header += ["TRL peak GB", "TRL s/step"]
        for row, r in zip(rows, data["rows"]):
            other = trl.get(r["layout"], {})
            row += [other.get("peak_gb_per_process"), other.get("step_seconds")]
    model = f"{data['model']}, {data['parameters'] / 1e6:.0f}M parameters, {data['dtype']}"
    return f"Model: {model}.\n\n" + table(header, rows)


def weight_sync(data: dict) -> str:
    rows = [[r["model"], r["weights"], num(r["push_mb"], 0), num(r["trainable_m"], 2), ms(r.get("merge_s")),
             ms(r.get("unmerge_s")), ms(r["export_s"]), ms(r["in_process_sync_s"]),
             f"{ms(r['server_sync_s'])} ({r['server_parts_per_sync']:.0f})"] for r in data["rows"]]
    return (f"{data['dtype']}, median of {data['syncs']} syncs; times in ms.\n\n"
            + table(["model", "weights", "pushed MB", "trainable (M)", "merge", "unmerge", "export",
                     "in-process sync", "server sync (parts)"], rows))


def weight_transport(data: dict) -> str:
    rows = [[r["model"], r["transport"], num(r["push_mb"], 0), num(r["bucket_mb"], 0), ms(r["sync_s"]),
             f"{r['speedup_vs_http']:.2f}x"] for r in data["rows"]]
    return (f"{data['dtype']}, full weights, median of {data['syncs']} syncs; times in ms.\n\n"
            + table(["model", "transport", "pushed MB", "part MB", "sync", "vs http"], rows))


def lora_sync(data: dict) -> str:
    rows = [[r["model"], r["engine"], r["sync"], num(r["mb_per_sync"], 1), ms(r["sync_s"]),
             f"{r['speedup_vs_merged']:.1f}x", f"{num(r['first_sync_mb'], 0)} MB, {ms(r['first_sync_s'])} ms"]
            for r in data["rows"]]
    load = f"; load average {data['load_average'][0]:.1f} at the end" if data.get("load_average") else ""
    return (f"{data['dtype']}, LoRA {data['lora']}, median of {data['syncs']} syncs after the first; times in ms"
            f"{load}.\n\n"
            + table(["model", "engine", "model.lora.sync", "MB per sync", "sync", "vs merged", "first sync"], rows))


def answer_grading_vs_peers(data: dict) -> str:
    cols = ["r1kit", "typed", "symbolic", "mathverify"]
    rows = [[r["task"], r["completions"], *(r[c] for c in cols)] for r in data["tasks"]]
    rows.append(["all", data["total"]["completions"], *(data["total"][c] for c in cols)])
    return ("Completions whose grade disagrees with the reasoning-gym task's own `score_answer`: r1kit's `accuracy` "
            "(the task's scorer), the answer-type checkers alone (a file without task metadata), numbers-then-strings-"
            "then-math-verify, and math-verify alone (as TRL's and open-r1's accuracy rewards grade); "
            f"{data['rows_per_task']} problems per task.\n\n"
            + table(["task", "completions", "r1kit accuracy", "type checkers", "symbolic fallback", "math-verify"],
                    rows))


def algorithms(data: dict) -> str:
    budget = f"{data['minutes_per_run']} minutes per run" if data["minutes_per_run"] else "a fixed step budget"
    overrides = ", ".join(f"`{o}`" for o in data["overrides"]) or "none"
    rows = [[r["preset"], "on" if r["filter"] else "off", r["seed"], r["steps"], pct(r["accuracy_after"]),
             num(r["mean_kept_fraction"], 2), num(r["prompts_drawn_per_step"], 2), num(r["final_mean_length"], 1)]
            for r in data["runs"]]
    return (f"From {data['start_accuracy']}; {budget}; overrides: {overrides}.\n\n"
            + table(["loss_type", "filter", "seed", "steps", "held-out greedy after", "kept fraction",
                     "prompts drawn per step", "final mean length"], rows))


def kill_trials(data: dict) -> str:
    s = data["summary"]
    rows = [[r["trial"], r["kill_after_s"] if "kill_after_s" in r else f"step {r['kill_after_step']} + {r['then_s']} s",
             "yes" if r.get("resume_killed") else "no", ", ".join(r["checkpoints_left"]) or "none",
             "yes" if r["all_complete"] else "no", "yes" if r["identical"] else "no", r["error"]] for r in data["rows"]]
    pruning = " A checkpoint every step, keeping one: kills land in pruning too." if s.get("prune_every_step") else ""
    return (f"{s['trials']} trials, {s['killed']} killed, {s.get('resumes_killed', 0)} resumes killed during set-up, "
            f"{s['identical']} resumed to bit-identical final weights, {s['failed']} failed, "
            f"{s['incomplete_checkpoints']} incomplete checkpoints counted (an uninterrupted run took "
            f"{data['straight_run_seconds']} s).{pruning}\n\n"
            + table(["trial", "SIGKILL after", "resume killed too", "checkpoints left", "all complete",
                     "final weights identical", "error"], rows))


def checksums(data: dict) -> str:
    return ("What a checkpoint's checksums cost (SHA-256 of every file, written with it and verified on resume), "
            f"for a {data['megabytes']} MB file (SmolLM2-135M's bf16 weights).\n\n"
            + table(["MB", "write (s)", "verify (s)", "verify GB/s"],
                    [[data["megabytes"], data["write_seconds_best"], data["verify_seconds_best"],
                      data["verify_gb_per_second"]]]))


def serve_ref_load(data: dict) -> str:
    answers = ", ".join(f"{k}: {v}" for k, v in data["answers"].items())
    rows = [["model", data["model"]], ["requests, concurrent callers", f"{data['requests']}, {data['concurrency']}"],
            ["answers", answers], ["errors", len(data["errors"])],
            ["good requests: p50 / p99 latency (ms)", f"{data['p50_ms']:,} / {data['p99_ms']:,}"],
            ["server resident memory: start / peak (MB)", f"{data['rss_start_mb']} / {data['rss_peak_mb']}"],
            ["stalled connections cut off", f"{data['stalled_cut_off']} of {data['stalled']}"],
            ["wall time (s)", data["wall_s"]], ["load average", num(data["load_average"], 1)]]
    return table(["", "measured"], rows)


def real_model(data: dict) -> str:
    rows = []
    for stage, key in (("after the cold start", "before"), ("after GRPO", "after")):
        m = data[key]
        rows.append([stage, pct(m["greedy_accuracy"]), pct(m["format_share"]), pct(m["sampled_pass1"]),
                     " / ".join(pct(v) for v in m["pass_at"].values()), num(m["mean_length"], 1)])
    return (f"`{data['model']}`: cold start `{data['cold_start']}` ({data['cold_start_seconds'] / 60:.1f} min), then "
            f"`{data['recipe']}` for {data['steps']} steps ({data['train_wall_seconds'] / 60:.1f} min); "
            f"{data['eval_problems']} held-out problems.\n\n"
            + table(["stage", "held-out greedy", "in the format", "sampled pass@1",
                     " / ".join(data["before"]["pass_at"]), "mean length"], rows))


def update_memory(data: dict) -> str:
    c = data["config"]
    rows = [[r["variant"], num(r["update_peak_mib"], 0), num(r["peak_mib"], 0), num(r["s_per_update"], 1)]
            for r in data["rows"]]
    return (f"{c['completions']} completions of {c['length']} tokens after a {c['prompt']}-token prompt; vocabulary "
            f"{data['vocab_size']:,}, one logits tensor {data['logits_mib']:,.0f} MiB; body {c['layers']} layers x "
            f"{c['hidden']}.\n\n" + table(["update", "peak above the start (MiB)", "process peak (MiB)", "s/update"],
                                          rows))


def packing(data: dict) -> str:
    rows = []
    for model, layouts in data["results"].items():
        for layout, r in layouts.items():
            tokens = f"{r['real_tokens']:,} / {r['padded_tokens']:,}" if "real_tokens" in r else None
            rows.append([model, layout, tokens, num(r["s_per_update"], 1)])
    return table(["model", "layout", "real / padded tokens", "s/update"], rows)


def sft_packing(data: dict) -> str:
    rows = [[r["setup"], num(r["tokens_per_second"], 0), num(r["padding_share"], 2), num(r["final_loss"], 3)]
            for r in data["results"]]
    return (f"{data['samples']} samples, batch {data['batch']}, max_seq_length {data['max_seq_length']}.\n\n"
            + table(["setup", "tokens/s", "pad share", "final loss"], rows))


def asynchronous(data: dict) -> str:
    """benchmarks/async.py: every mode's median s/step, speed-up over sync, accuracy and time to the target."""
    a = data["argv"]
    rows = [[mode, num(r["median_s_per_step"], 2), num(r["speedup"], 2), pct(r["accuracy_after"]),
             num(r["staleness_mean"], 2), num(r["minutes_to_target"], 1) or "not reached",
             num(r["time_to_target_speedup"], 2)] for mode, r in data["table"].items()]
    return (f"{a['steps']} steps, seeds {a['seeds']}; generator on core {a['generator_core']}, trainer on core "
            f"{a['trainer_core']}.\n\n"
            + table(["mode", "median s/step", "speed-up over sync", "held-out greedy after", "mean staleness",
                     f"minutes to {pct(a['target'])}", "time-to-target speed-up"], rows))


def tool_world(data: dict) -> str:
    def code(text: str) -> str:  # a completion as one code span: tags and tool messages shown as written
        return "`" + text.replace("`", "'").replace("\n", " ") + "`"

    overrides = ", ".join(f"`{o}`" for o in data["overrides"]) or "none"
    summary = table(["held-out greedy", "before", "after"],
                    [["accuracy", pct(data["accuracy_before"]), pct(data["accuracy_after"])],
                     ["answers that call the tool", pct(data["tool_share_before"]), pct(data["tool_share_after"])]])
    shown = [[code(b["question"]), b["answer"], code(b["completion"]), code(a["completion"])]
             for b, a in zip(data["completions_before"], data["completions_after"])]
    return (f"`{data['recipe']}`, overrides: {overrides}. {data['steps']} GRPO steps in "
            f"{data['wall_seconds'] / 60:.1f} minutes (training {data['train_wall_seconds'] / 60:.1f}), rewarded for correctness only.\n\n{summary}\n\n"
            "Greedy completions of the first held-out problems, before and after:\n\n"
            + table(["question", "answer", "before", "after"], shown))

RENDERERS = {"vs_trl": vs_trl, "learning": learning, "generation": generation, "memory": memory,
             "weight_sync": weight_sync, "weight_transport": weight_transport, "lora_sync": lora_sync,
             "algorithms": algorithms, "kill_trials": kill_trials,
             "serve_ref_load": serve_ref_load, "real_model": real_model, "update_memory": update_memory,
             "packing": packing, "sft_packing": sft_packing,
             "answer_grading_vs_peers": answer_grading_vs_peers, "checksums": checksums,
             "async": asynchronous, "tool_world": tool_world}

# kinds written by another kind's script
SCRIPTS = {"weight_transport": "weight_sync.py --transports", "lora_sync": "weight_sync.py --lora-sync"}


def render_file(path: Path) -> str:
    return RENDERERS[kind_of(path)](json.loads(path.read_text())) + "\n\n" + provenance(path)


def render_kind(kind: str, results: Path = RESULTS) -> str:
    files = result_files(kind, results)
    if kind not in RENDERERS or not files:
        raise KeyError(f"no benchmark results of kind {kind!r} (kinds: {sorted(RENDERERS)}; files in {results})")
    return "\n\n".join(render_file(f) for f in files)


def benchmarks_page(results: Path = RESULTS) -> str:
    """Every results file, grouped by kind: the generated page reference/benchmarks.md."""
    out = ["# Benchmark results", "",
           "Generated from `benchmarks/results/*.json` when the site is built; each table names its file, the "
           "machine and versions it states, and its date. The scripts that wrote them are in `benchmarks/` "
           "(each prints the same table and says how it measures); the pages on speed, memory, engines, "
           "several processes and reliability explain them."]
    every = result_files(None, results)
    for kind in RENDERERS:
        files = [f for f in every if kind_of(f) == kind]  # a file of no known kind raises here
        if files:
            out += ["", f"## {kind}", "", f"`python benchmarks/{SCRIPTS.get(kind, kind + '.py')}`", ""]
            out += [f"### {f.name}\n\n{render_file(f)}\n" for f in files]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(benchmarks_page())
