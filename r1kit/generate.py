"""`r1kit generate`: distillation data, n samples per prompt from any model and engine.

    r1kit generate recipes/tiny/grpo.yaml generate.n=8 generate.keep=correct generate.output=traces.jsonl
    r1kit sft sft.source=traces.jsonl     # the rows are the chat-messages jsonl SFT reads

Each prompt of data.source (or of a shipped benchmark) is sampled generate.n times with the R1
protocol (temperature 0.6, top_p 0.95) by the recipe's engine (rollout.engine: hf, vllm, server),
scored by the recipe's rewards and by r1kit's answer checker, and written as rows: ``messages``
(system?/user/assistant), prompt, completion, finish_reason, rewards per function, correct, indices,
token count. ``generate.keep`` filters them: all, correct (rejection sampling, as R1's SFT data), or
reward >= generate.min_reward.

Resumable. Beside OUTPUT lie OUTPUT.manifest.json (the settings that decide the rows: a run pointed
at an output made with other settings is refused, naming the keys, before anything is touched) and
OUTPUT.progress.jsonl (one line per finished prompt: its counts and the rows file's size after its
rows). Per prompt, its rows are written and fsync'd, then its progress line is written and fsync'd.
A restart keeps exactly the prompts the progress file confirms: it cuts the rows file back to the
size the last confirmed prompt left (a torn line, or rows of a prompt whose progress line was not
written), and a torn progress line is dropped. Sampling is seeded by (seed, global prompt index,
sample index) and batches are fixed by prompt index (a batch cut short is generated again whole,
only its missing prompts written), so a resumed run writes the same rows as an uninterrupted one.
A .parquet output accumulates in OUTPUT.partial.jsonl and is converted (temp file, fsync, rename)
when every prompt is done.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from r1kit.config import Config, ConfigError, to_dict
from r1kit.config_checks import differences
from r1kit.data.answers import extract_answer
from r1kit.data.benchmarks import checker_for
from r1kit.data.grading import gold_answer, grade, is_correct
from r1kit.data.sources import DataError, load_data
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.logging import console, progress_bar, quiet_library_progress
from r1kit.rewards import combine, reward_inputs
from r1kit.types import SamplingParams

MANIFEST_VERSION = 1


# ---------------------------------------------------------------- the files of one output


@dataclass(frozen=True)
class OutputFiles:
    output: Path  # what the user asked for: .jsonl or .parquet

    @property
    def rows(self) -> Path:  # where rows are appended: the output itself, or a working jsonl for parquet
        return self.output if self.output.suffix == ".jsonl" else Path(f"{self.output}.partial.jsonl")

    @property
    def manifest(self) -> Path:
        return Path(f"{self.output}.manifest.json")

    @property
    def progress(self) -> Path:
        return Path(f"{self.output}.progress.jsonl")

    @property
    def summary(self) -> Path:
        return Path(f"{self.output}.summary.json")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_durably(f, text: str) -> int:
    """Append, flush and fsync; returns the file's size after."""
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
    return f.tell()


def open_output(files: OutputFiles, identity: dict, total_prompts: int) -> list[dict]:
    """The progress entries of the prompts already done (none for a new output), after checking the
    manifest and cutting the files back to their last confirmed prompt. Refuses, with nothing
    written, an output made with other settings or by something else."""
    if not files.manifest.exists():
        strays = [p for p in (files.output, files.rows, files.progress) if p.exists()]
        if strays:
            raise FileExistsError(f"{strays[0]} exists but {files.manifest} does not, so it was not written by "
                                  "r1kit generate (or its manifest was removed); refusing to overwrite it: choose "
                                  "another generate.output")
        files.output.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(files.manifest, json.dumps({"r1kit_generate": MANIFEST_VERSION, "output": str(files.output),
                                                  "config": identity}, indent=2))
        return []
    try:
        saved = json.loads(files.manifest.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{files.manifest} is not an r1kit generate manifest ({e}); refusing to touch "
                          f"{files.output}: choose another generate.output") from None
    changed = [f"{key}: {old!r} -> {new!r}" for key, old, new in differences(saved, identity)]
    if changed:
        raise ConfigError(f"{files.output} was made with other settings ({files.manifest}): " + "; ".join(changed)
                          + ". Rerun with the same settings to continue it, or choose another generate.output")
    entries = _read_progress(files.progress)
    if len(entries) > total_prompts:
        raise DataError(f"{files.progress} lists {len(entries)} prompts but the data has {total_prompts}")
    _cut_rows_back(files, entries, total_prompts)
    return entries


def _read_progress(path: Path) -> list[dict]:
    """Confirmed prompts, in order; a torn last line (the write a kill interrupted) is cut off the file."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    entries, good_end = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            entry = json.loads(line) if line.endswith(b"\n") else None
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict) or entry.get("prompt_index") != len(entries):
            break  # torn or out of order: nothing after it can be trusted
        entries.append(entry)
        good_end += len(line)
    if good_end < len(raw):
        if raw[good_end:].count(b"\n") > 1:  # more than one bad line is not an interrupted write
            raise DataError(f"{path}: line {len(entries) + 1} is not a progress entry of prompt {len(entries)}; "
                            "the file was changed outside r1kit generate")
        os.truncate(path, good_end)
    return entries


def _cut_rows_back(files: OutputFiles, entries: list[dict], total_prompts: int) -> None:
    committed = entries[-1]["end_offset"] if entries else 0
    if not files.rows.exists():
        finished_parquet = files.rows != files.output and files.output.exists() and len(entries) == total_prompts
        if committed and not finished_parquet:
            raise DataError(f"{files.rows} is missing but {files.progress} says {len(entries)} prompts were written")
        return
    size = files.rows.stat().st_size
    if size < committed:
        raise DataError(f"{files.rows} holds {size} bytes but {files.progress} says {committed} were written; the "
                        "file was changed outside r1kit generate")
    if size > committed:  # rows of a prompt whose progress line was never written, or a torn line
        os.truncate(files.rows, committed)


def finish_output(files: OutputFiles) -> None:
    """Parquet: convert the working jsonl into the output (temp file, fsync, rename), then drop it."""
    if files.rows == files.output or not files.rows.exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(files.rows) as f:
        records = [json.loads(line) for line in f]
    tmp = files.output.with_name(f".{files.output.name}.tmp")
    pq.write_table(pa.Table.from_pylist(records), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, files.output)
    files.rows.unlink()


# ---------------------------------------------------------------- prompts and settings


def load_prompts(cfg: Config, benchmark: str | None) -> tuple[list[dict], str, str]:
    """(rows, source, split): generate.split of data.source, or a shipped benchmark's test split."""
    g = cfg.generate
    if benchmark:
        from r1kit.evaluate.benchmarks import benchmark_data

        rows, source, _ = benchmark_data(benchmark, cfg.data, g.limit)
        return rows, source, "heldout" if benchmark == "tiny" else "test"
    rows, report = load_data(cfg.data, g.split, size=g.limit)
    if report.skipped:
        console.print(f"[yellow]data {report.summary()}[/]")
    return rows, cfg.data.source, g.split


def default_output(cfg: Config, source: str, split: str) -> Path:
    """<output_dir>/generate/<model>-<data>-<split>.jsonl"""
    def slug(text: str) -> str:
        parts = [p for p in text.replace(":", "/").split("/") if p not in ("", ".", "..")]
        return "-".join(parts[-2:]).removesuffix(".jsonl").removesuffix(".parquet") or "x"
    return Path(cfg.output_dir) / "generate" / f"{slug(cfg.model.name_or_path)}-{slug(source)}-{split}.jsonl"


def identity(cfg: Config, source: str, split: str, rows: list[dict], checker: str, max_new_tokens: int) -> dict:
    """What decides the rows, as stored in the manifest. Memory and speed knobs (generate.batch_size,
    rollout.generation_batch_size, rollout.vllm.*, services.*, model.device) are left out, so a resumed
    run may change them."""
    digest = hashlib.sha256()
    for row in rows:  # the prompts themselves: a data file edited between sessions is caught
        digest.update(json.dumps([row["question"], row["answer"]], ensure_ascii=False, default=str).encode())
    d, g = cfg.data, to_dict(cfg.generate)
    for knob in ("batch_size", "output"):
        g.pop(knob)
    g["max_new_tokens"] = max_new_tokens
    tree = {"model": {"name_or_path": cfg.model.name_or_path, "gguf_file": cfg.model.gguf_file, "dtype": cfg.model.dtype},
            "engine": cfg.rollout.engine, "seed": cfg.seed, "generate": g,
            "prompts": {"source": source, "split": split, "count": len(rows), "sha256": digest.hexdigest(),
                        "system_prompt": d.system_prompt, "instruction": d.instruction, "prompt_format": d.prompt_format},
            "rewards": [to_dict(r) for r in cfg.rewards], "reward_on_error": cfg.train.reward_on_error,
            "answers": {"extract": cfg.eval.extract, "checker": checker}}
    return json.loads(json.dumps(tree))  # as it reads back from the manifest (tuples -> lists)


# ---------------------------------------------------------------- sampling, scoring, rows


@dataclass
class Batch:
    rows: list[dict]  # prompt rows with prompt_text and prompt_ids
    completions: list  # (len(rows) * n,) r1kit.types.Completion, grouped by prompt
    rewards: object  # r1kit.rewards.RewardResult over the completions


def sample_batch(cfg: Config, engine, reward_funcs, rows: list[dict], first_index: int, max_new_tokens: int) -> Batch:
    """n samples of each row; prompt i of the whole data is seeded by (seed, i) whatever batch it is in."""
    g = cfg.generate
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                              seed=cfg.seed, prompt_offset=first_index)
    completions = engine.generate([r["prompt_ids"] for r in rows], g.n, sampling)
    texts, columns = reward_inputs(rows, completions, cfg.data)
    return Batch(rows, completions, combine(reward_funcs, texts, columns, cfg.train.reward_on_error))


def prompt_records(cfg: Config, batch: Batch, i: int, prompt_index: int, checker: str) -> list[dict]:
    """One record per sample of batch prompt i (every sample; `kept` says whether the filter keeps it)."""
    g, row = cfg.generate, batch.rows[i]
    messages = build_messages(row["question"], cfg.data.system_prompt, cfg.data.instruction)
    gold = gold_answer(row["answer"])
    records = []
    for j in range(g.n):
        k = i * g.n + j
        c = batch.completions[k]
        extracted = extract_answer(c.text, cfg.eval.extract)
        correct = is_correct(grade(extracted, row, checker))
        total = batch.rewards.total[k]
        kept = g.keep == "all" or (g.keep == "correct" and correct) or (g.keep == "reward" and total >= g.min_reward)
        records.append({
            "messages": [*messages, {"role": "assistant", "content": c.text}],
            "prompt": row["prompt_text"], "completion": c.text, "finish_reason": c.finish_reason,
            "rewards": {label: values[k] for label, values in batch.rewards.per_func.items()}, "reward": total,
            "correct": correct, "extracted": extracted, "answer": gold,
            "prompt_index": prompt_index, "sample_index": j, "num_tokens": len(c.token_ids), "kept": kept})
    return records


def _engine_for(cfg: Config):
    """Tokenizer and engine the recipe names (r1kit.run.make_engine); the HF model is the weights the
    vllm/server engines are given, so every engine samples the same model."""
    from r1kit.models import pick_device
    from r1kit.run import _load_policy, make_engine

    model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=False,
                                    lora=dataclasses.replace(cfg.model.lora, enabled=False))  # sampling: base weights
    vllm_cfg = dataclasses.replace(cfg.rollout.vllm, sleep_mode=False)  # no training between batches to sleep for
    engine_cfg = dataclasses.replace(cfg, model=model_cfg, rollout=dataclasses.replace(cfg.rollout, vllm=vllm_cfg))
    tokenizer, model = _load_policy(engine_cfg)
    model = model.to(pick_device(cfg.model.device))
    return tokenizer, model, make_engine(engine_cfg, model, tokenizer)


# ---------------------------------------------------------------- the command


@dataclass
class Session:
    """What this invocation did (earlier sessions of a resumed output are in the progress file)."""

    prompts: int = 0  # prompts written now
    tokens: int = 0  # completion tokens sampled now (a batch regenerated on resume included)
    seconds: float = 0.0  # wall time of sampling and scoring


def generate_data(cfg: Config, benchmark: str | None = None) -> dict:
    """Sample, score, filter and write every prompt not yet done; returns the summary (also OUTPUT.summary.json)."""
    from r1kit.run import _build_rewards

    g = cfg.generate
    quiet_library_progress()
    reward_funcs = _build_rewards(cfg)  # a bad reward fails before any model is loaded
    rows, source, split = load_prompts(cfg, benchmark)
    checker = checker_for(source, cfg.eval.checker)
    max_new_tokens = g.max_new_tokens or cfg.rollout.max_completion_length
    files = OutputFiles(Path(g.output) if g.output else default_output(cfg, source, split))
    files.output.parent.mkdir(parents=True, exist_ok=True)
    session = Session()
    with _exclusive(files):
        done = open_output(files, identity(cfg, source, split, rows, checker, max_new_tokens), len(rows))
        if done:
            left = f"{len(rows) - len(done)} to go" if len(done) < len(rows) else "nothing left to sample"
            console.print(f"{files.output}: {len(done)} of {len(rows)} prompts already written; {left}")
        if len(done) < len(rows):
            console.print(f"[bold]r1kit generate[/] {len(rows)} prompts x {g.n} samples of {cfg.model.name_or_path} "
                          f"({cfg.rollout.engine}, T={g.temperature}, top_p={g.top_p}, keep={g.keep}) -> {files.output}")
            _generate_rest(cfg, files, rows, done, reward_funcs, checker, max_new_tokens, session)
        finish_output(files)
    summary = summarize(files, done, session)
    _write_atomic(files.summary, json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


class _exclusive:
    """One writer per output: a second `r1kit generate` on the same file fails instead of interleaving rows."""

    def __init__(self, files: OutputFiles):
        self.path = Path(f"{files.output}.lock")

    def __enter__(self):
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise FileExistsError(f"another r1kit generate is writing {self.path.with_suffix('')} "
                                  f"(it holds {self.path}); wait for it or choose another generate.output") from None
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        self.file.close()


def _generate_rest(cfg: Config, files: OutputFiles, rows: list[dict], done: list[dict], reward_funcs, checker: str,
                   max_new_tokens: int, session: Session) -> None:
    """Batches from the one holding the first prompt not done; each finished prompt is made durable at once."""
    from r1kit.model_files import check_context

    g = cfg.generate
    if cfg.tools:  # its rows would hold the tool messages inside the assistant's content, and SFT would train on them
        raise ConfigError("r1kit generate does not run tools yet: drop `tools` from the recipe (docs/tools.md)")
    tokenizer, model, engine = _engine_for(cfg)
    try:
        prompts = [_with_prompt(row, cfg, tokenizer) for row in rows]
        check_context(model, max(len(p["prompt_ids"]) for p in prompts), max_new_tokens, "generate.max_new_tokens")
        first_batch = len(done) // g.batch_size * g.batch_size
        with open(files.rows, "ab") as out, open(files.progress, "ab") as progress, \
                progress_bar(cfg.log.progress) as bar:
            task = bar.add_task("generate", total=len(rows), completed=len(done), info="")
            for first in range(first_batch, len(rows), g.batch_size):
                start = time.perf_counter()
                batch = sample_batch(cfg, engine, reward_funcs, prompts[first:first + g.batch_size], first,
                                     max_new_tokens)
                session.tokens += sum(len(c.token_ids) for c in batch.completions)
                for i in range(len(batch.rows)):
                    if first + i >= len(done):  # a batch cut short by a kill: only its missing prompts
                        done.append(_write_prompt(out, progress, prompt_records(cfg, batch, i, first + i, checker)))
                        session.prompts += 1
                session.seconds += time.perf_counter() - start
                bar.update(task, completed=len(done), info=_bar_info(done, session))
    finally:
        engine.close()


def _with_prompt(row: dict, cfg: Config, tokenizer) -> dict:
    d = cfg.data
    ids = encode_prompt(tokenizer, build_messages(row["question"], d.system_prompt, d.instruction), d.prompt_format)
    return {**row, "prompt_text": tokenizer.decode(ids), "prompt_ids": ids}


def _write_prompt(out, progress, records: list[dict]) -> dict:
    """The kept rows of one prompt, fsync'd, then its progress entry, fsync'd (module docstring)."""
    kept = [{k: v for k, v in r.items() if k != "kept"} for r in records if r["kept"]]
    end = _append_durably(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept).encode())
    entry = {"prompt_index": records[0]["prompt_index"], "samples": len(records), "kept": len(kept),
             "correct": sum(r["correct"] for r in records), "tokens": sum(r["num_tokens"] for r in records),
             "truncated": sum(r["finish_reason"] == "length" for r in records), "end_offset": end}
    _append_durably(progress, (json.dumps(entry) + "\n").encode())
    return entry


def _bar_info(done: list[dict], session: Session) -> str:
    samples = sum(e["samples"] for e in done) or 1
    rate = session.tokens / session.seconds if session.seconds else 0.0
    return (f"{rate:.0f} tok/s  pass {sum(e['correct'] for e in done) / samples:.0%}  "
            f"rows {sum(e['kept'] for e in done)}")


def summarize(files: OutputFiles, done: list[dict], session: Session) -> dict:
    """Totals over every session of this output, and this session's speed."""
    def total(key: str) -> int:
        return sum(e[key] for e in done)
    samples = total("samples")
    share = (lambda x: x / samples) if samples else (lambda x: None)
    return {"output": str(files.output), "prompts": len(done), "samples": samples, "rows_written": total("kept"),
            "kept_fraction": share(total("kept")), "pass_rate": share(total("correct")),
            "mean_tokens": share(total("tokens")), "truncated": share(total("truncated")),
            "session": {"prompts": session.prompts, "tokens": session.tokens, "seconds": round(session.seconds, 3),
                        "tokens_per_second": session.tokens / session.seconds if session.seconds else None}}


def print_summary(s: dict) -> None:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    speed = s["session"]["tokens_per_second"]
    console.print(f"[bold]done[/]: {s['prompts']} prompts, {s['samples']} samples, {s['rows_written']} rows written "
                  f"(kept {pct(s['kept_fraction'])}); pass rate {pct(s['pass_rate'])}; truncated {pct(s['truncated'])}; "
                  + (f"{speed:.0f} tokens/s this session" if speed else "nothing left to sample"))
    console.print(f"output: {s['output']}", soft_wrap=True)
