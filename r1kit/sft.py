"""SFT: the cold start before RL, and distillation of reasoning traces, on one process or many.

Loss: the summed negative log-likelihood of every assistant token (end-of-turn token included, so
the model learns to stop; prompts, system turns and role markers are context) divided by the number
of such tokens in the whole step, over every process. So the update does not depend on how the step
is split into processes, micro-batches or packed rows: 2 processes x B/2 samples equal 1 x B.

Sources (sft.source):
  tiny_arith   traces of the built-in task: a seeded mix of direct answers and step-by-step
               working (see direct_share and r1kit.data.tasks for why the mix matters)
  gsm8k        the shipped GSM8K train split as Tiny-R1 traces (r1kit.data.traces): worked steps in
               <reasoning> (data.answer_tag_style), "#### N" as the <answer>, prompts styled by data.*
  a file       .jsonl/.parquet/.csv chat data in the layouts of r1kit.data.chat (messages, ShareGPT /
               Bespoke-Stratos / OpenThoughts conversations, prompt/completion), sft.format picks or detects
  owner/name   the same from the hub (datasets.load_dataset; sft.subset, sft.split)

Each step draws sft.batch_size samples (a seeded stream, replayed on resume); process r takes the
r-th contiguous block; its samples are padded per micro-batch, or packed (sft.packing) into rows of
sft.max_seq_length tokens whose samples do not attend to each other (r1kit.data.chat.packed_batch).

    r1kit sft recipes/tiny/sft.yaml   # builds the shipped builtin:tiny-sft checkpoint
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m r1kit sft RECIPE
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field

import torch
from transformers import get_scheduler

from r1kit import distributed as dist
from r1kit.checkpoint import load_accelerator_state, save_checkpoint, save_final
from r1kit.config import Config
from r1kit.data import chat, tasks
from r1kit.data.chat import ChatStats, Sample
from r1kit.data.sources import load_rows
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.data.traces import gsm8k_sft_samples
from r1kit.evaluate import evaluate_across, tiny_style_prefills
from r1kit.logging import MetricsLogger, console, format_metrics, progress_bar, quiet_library_progress
from r1kit.models import load_model, load_tokenizer, make_optimizer, pick_device
from r1kit.rollout.hf import HFEngine
from r1kit.rollout.multiturn import MultiTurnEngine, ToolMessages
from r1kit.tools.calculator import calculator
from r1kit.tools.registry import ToolResult, load_toolbox
from r1kit.run import check_model_strategy, check_saved_dtype, prompt_tools
from r1kit.rundir import StopSignals, prepare_run_dir, resume_point, run_stopped


# ---------------------------------------------------------------- data


def build_samples(cfg: Config, tokenizer) -> tuple[list[Sample], ChatStats]:
    """Every training sample of sft.source, tokenized, with completion-only labels, fitted to sft.max_seq_length."""
    eos = [tokenizer.eos_token_id]
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    stats = ChatStats()
    if cfg.sft.source == "tiny_arith":
        rows = load_rows(cfg.data, "train", size=cfg.data.train_size)
        rng = random.Random(cfg.seed)
        samples = []
        for i, row in enumerate(rows):
            style = "direct" if rng.random() < direct_share(row, cfg.sft) else "working"
            prompt = encode_prompt(tokenizer, build_messages(row["question"], cfg.data.system_prompt))
            if cfg.sft.tool_fraction and rng.random() < cfg.sft.tool_fraction:
                samples.append(tool_sample(tokenizer, prompt, row, f"tiny_arith row {i}"))
                continue
            target = encode(tasks.trace(row, style, cfg.data.answer_tag_style)) + eos
            samples.append(Sample(prompt + target, [chat.IGNORE] * len(prompt) + target, f"tiny_arith row {i}"))
        stats.conversations = len(samples)
    else:
        conversations = _gsm8k_conversations(cfg) if cfg.sft.source == "gsm8k" else _chat_conversations(cfg, stats)
        encode_history = lambda history: encode_prompt(tokenizer, history, cfg.data.prompt_format)  # noqa: E731
        samples = []
        for messages, origin in conversations:
            parts = chat.tokenize_conversation(messages, encode_history, encode, eos, origin)
            stats.split_conversations += len(parts) > 1
            samples += parts
        stats.conversations = len(conversations)
    samples = chat.fit_length(samples, cfg.sft.max_seq_length, cfg.sft.overlong, stats)
    stats.samples = len(samples)
    return samples, stats


def tool_sample(tokenizer, prompt: list[int], row: dict, origin: str) -> Sample:
    """A trace that asks the calculator: call turn, the tool message (inserted exactly as a multi-turn rollout
    inserts it, r1kit.rollout.multiturn, and not trained on), answer turn. The answer is the tool's own."""
    call, answer = tasks.tool_turns(row)
    result = calculator(tasks.expression(row))
    if result != row["answer"]:
        raise ValueError(f"{origin}: the calculator says {result}, the row {row['answer']}")
    eos = [tokenizer.eos_token_id]
    first = tokenizer(call, add_special_tokens=False).input_ids + eos
    inserted = ToolMessages(tokenizer).ids([ToolResult(result)])
    second = tokenizer(answer, add_special_tokens=False).input_ids + eos
    labels = [chat.IGNORE] * len(prompt) + first + [chat.IGNORE] * len(inserted) + second
    return Sample(prompt + first + inserted + second, labels, origin)


def _gsm8k_conversations(cfg: Config) -> list[tuple[list[dict], str]]:
    """(messages, origin) for every GSM8K train problem, in the recipe's prompt style."""
    rows = load_rows(dataclasses.replace(cfg.data, source="gsm8k"), "train")
    samples = gsm8k_sft_samples(rows, cfg.data.system_prompt, cfg.data.answer_tag_style, cfg.data.instruction)
    return [(s["messages"], f"gsm8k train row {i}") for i, s in enumerate(samples)]


def _chat_conversations(cfg: Config, stats: ChatStats) -> list[tuple[list[dict], str]]:
    """(messages, origin) of a chat file or hub dataset; a malformed row is an error naming it."""
    s = cfg.sft
    records = chat.read_records(s.source, s.subset, s.split)
    if not records:
        raise chat.DataError(f"sft.source {s.source!r} is empty")
    out = []
    for i, row in enumerate(records):
        where = f"{s.source} row {i}"
        layout = chat.detect_layout(set(row), where) if s.format == "auto" else s.format
        stats.layouts[layout] = stats.layouts.get(layout, 0) + 1
        messages = chat.to_messages(row, layout, where)
        out.append((chat.stratos_to_think(messages) if s.thought_tags == "think" else messages, where))
    return out


def direct_share(row: dict, sft_cfg) -> float:
    """Probability that a tiny_arith trace answers directly.

    Problems that start with a big number (>= sft.large_from) are mostly worked step by step, the
    rest mostly answered directly. The cold-start policy then shows its working on some problems
    and answers directly on the others, so greedy accuracy starts in between the two styles'; and
    because each style is still sampled on every kind of problem, RL can discover that working
    pays everywhere.
    """
    if sft_cfg.large_from and tasks.first_number(row) >= sft_cfg.large_from:
        return sft_cfg.large_direct_fraction
    return sft_cfg.direct_fraction


def micro_batches(samples: list[Sample], cfg: Config, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """This process's share of a step as model inputs: padded (one sample per row) or packed rows,
    sft.micro_batch_size rows per forward (0: all at once)."""
    s = cfg.sft
    if s.packing:
        bins = chat.pack_bins([len(x) for x in samples], s.max_seq_length)
        size = s.micro_batch_size or len(bins)
        return [chat.packed_batch(samples, bins[i:i + size], pad_id) for i in range(0, len(bins), size)]
    size = s.micro_batch_size or len(samples)
    return [chat.pad_batch(samples[i:i + size], pad_id) for i in range(0, len(samples), size)]


def forward_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed NLL of the batch's targets; packed rows carry position_ids and no attention_mask."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "targets"}
    logits = model(**inputs, use_cache=False).logits  # (R, L, V)
    return chat.token_nll(logits, batch["targets"].to(device))


# ---------------------------------------------------------------- the run


@dataclass
class SFTState:
    step: int = 0
    eval_before: dict = field(default_factory=dict)
    wall_seconds: float = 0.0  # earlier sessions of this run (resume)
    target_tokens: int = 0  # assistant tokens trained on so far
    skipped_nonfinite: int = 0


def run_sft(cfg: Config) -> dict:
    acc = dist.make_accelerator(cfg.model.device, cfg.train.max_grad_norm, cfg.model.dtype)
    if not acc.is_main_process:
        console.quiet = True
    resume = resume_point(cfg)  # a fresh run never overwrites another; a resume checks its settings
    check_model_strategy(cfg, acc)
    dist.local_share(cfg.sft.batch_size, acc, "sft.batch_size (samples per step)")
    pick_device(cfg.model.device)
    torch.manual_seed(cfg.seed)
    quiet_library_progress()
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code, cfg.model.gguf_file)
    samples, stats = build_samples(cfg, tokenizer)  # bad data fails here, before anything is written
    eval_rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)
    model = load_model(cfg.model, tokenizer, seed=cfg.seed)
    s = cfg.sft
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train, lr=s.learning_rate,
                               weight_decay=s.weight_decay, betas=(0.9, 0.95))  # train.optim picks the kind
    scheduler = get_scheduler(f"{s.lr_scheduler}_with_warmup" if s.lr_scheduler == "constant" else s.lr_scheduler,
                              optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=max(s.steps, 1))
    model, optimizer = acc.prepare(model, optimizer)
    state = SFTState()
    order = torch.Generator().manual_seed(cfg.seed)  # the stream of sample indices, one draw per step
    if resume is not None:
        load_accelerator_state(acc, resume.directory)
        scheduler.load_state_dict(resume.trainer_state["scheduler"])
        state = SFTState(**resume.trainer_state["run_state"])
        for _ in range(state.step):  # replay the draws of the steps done
            torch.randint(len(samples), (s.batch_size,), generator=order)
        console.print(f"resumed from {resume.directory} at step {state.step}")
    check_saved_dtype(cfg, acc, model)
    acc.wait_for_everyone()  # every process has checked the run directory and resumed: only now does it change
    if acc.is_main_process:
        prepare_run_dir(cfg, resume)
    console.print(f"[bold]r1kit sft[/] {cfg.name}: {s.steps} steps of {s.batch_size} samples from {s.source} "
                  f"({_describe(stats)}), {acc.num_processes} process(es), strategy {dist.strategy_name(acc)} "
                  f"-> {cfg.run_dir}")
    logger = MetricsLogger(cfg.run_dir, cfg.log, resume=resume is not None) if acc.is_main_process else None
    if cfg.eval.before and state.step == 0 and s.steps > 0:
        state.eval_before = sft_eval(cfg, model, tokenizer, eval_rows, acc)
        console.print("eval (before): " + format_metrics(state.eval_before, sorted(state.eval_before)))
    started, metrics = time.time(), {}
    model.train()
    with StopSignals() as signals, progress_bar(cfg.log.progress and acc.is_main_process) as bar:
        task = bar.add_task("sft", total=s.steps, completed=state.step, info="")
        while state.step < s.steps:
            step = state.step + 1
            indices = torch.randint(len(samples), (s.batch_size,), generator=order).tolist()
            mine = [samples[indices[i]] for i in dist.local_share(s.batch_size, acc)]
            lr = scheduler.get_last_lr()[0]  # the one this step's update uses
            metrics = dist.reduce_metrics(acc, train_step(cfg, acc, model, optimizer, mine, tokenizer.pad_token_id))
            metrics["train/lr"] = lr
            if not metrics["train/skipped_nonfinite"]:  # the schedule counts updates made (as transformers' Trainer)
                scheduler.step()
            state.step = step
            state.target_tokens += int(metrics["train/target_tokens"])
            state.skipped_nonfinite += int(metrics.pop("train/skipped_nonfinite"))
            if (s.eval_every and step % s.eval_every == 0) or (step == s.steps and cfg.eval.after):
                metrics |= sft_eval(cfg, model, tokenizer, eval_rows, acc)
                console.print(f"step {step}: " + format_metrics(metrics, sorted(metrics)))
            if logger is not None:  # before the checkpoint: a kill between the two leaves a line the resume rewrites
                logger.log(step, metrics)
            signum = dist.all_max(acc, signals.signum)  # SIGINT/SIGTERM: every process stops after this step
            if (s.save_every and step % s.save_every == 0) or step == s.steps or signum:
                state.wall_seconds += time.time() - started
                started = time.time()
                save_checkpoint(cfg.run_dir / "checkpoints", step, acc, model, tokenizer,
                                {"scheduler": scheduler.state_dict(), "run_state": dataclasses.asdict(state)},
                                keep=cfg.train.keep_checkpoints, lora_save=cfg.model.lora.save)
            bar.update(task, completed=step, info=f"loss {metrics['train/loss']:.3f}  "
                                                  f"tok/s {metrics['train/tokens_per_second']:.0f}")
            if signum and step < s.steps:
                if logger is not None:
                    logger.close()
                raise run_stopped(cfg, step, signum)
    return _finish(cfg, acc, model, tokenizer, state, metrics, stats, logger, time.time() - started)


def train_step(cfg: Config, acc, model, optimizer, mine: list[Sample], pad_id: int) -> dict:
    """One optimizer step on this process's samples; every process runs the same number of forwards
    (an empty share runs a one-token dummy with no target). Returns this process's metrics."""
    start = time.perf_counter()
    batches = micro_batches(mine, cfg, pad_id) if mine else []
    count = dist.all_max(acc, len(batches))
    dummy = {"input_ids": torch.full((1, 1), pad_id), "targets": torch.full((1, 1), chat.IGNORE)}
    batches += [dummy] * (count - len(batches))
    total_targets = int(dist.all_sum(acc, [chat.target_count(mine)])[0])  # the step's, over every process
    nll_sum, cells, tokens = 0.0, 0, sum(len(x) for x in mine)  # tokens: this process's, padding excluded
    for i, batch in enumerate(batches):
        nll = forward_nll(model, batch)
        loss = nll / max(total_targets, 1)
        if acc.num_processes > 1:  # strategies average gradients over processes: undo it, the sum is the step's
            loss = loss * acc.num_processes
        dist.backward(acc, model, loss, last=i == len(batches) - 1)
        nll_sum += nll.item()
        if batch is not dummy:
            cells += batch["input_ids"].numel()
    norm = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
    grad_norm = float("nan") if norm is None else float(norm)
    skipped = norm is not None and not math.isfinite(grad_norm)
    if skipped:
        console.print("[yellow]the gradient was NaN/inf: this step's update was skipped[/]")
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()  # the step ends when its kernels do (tokens/s counts the optimizer step's too)
    seconds = time.perf_counter() - start
    world = acc.num_processes  # reduce_metrics averages over processes: scale sums so the mean is the total
    return {"train/loss": nll_sum / max(total_targets, 1) * world, "train/grad_norm": grad_norm,
            "train/target_tokens": float(total_targets), "train/tokens": float(tokens * world),
            "train/tokens_per_second": tokens * world / seconds, "train/padding_share": 1 - tokens / max(cells, 1),
            "train/skipped_nonfinite": float(skipped), "time/step": seconds}


def _describe(stats: ChatStats) -> str:
    text = f"{stats.samples} samples of {stats.conversations} conversations"
    if stats.layouts:
        text += " (" + ", ".join(f"{n} {layout}" for layout, n in sorted(stats.layouts.items())) + ")"
    extras = [f"{stats.split_conversations} multi-turn split per turn"] if stats.split_conversations else []
    extras += [f"{stats.truncated} truncated"] if stats.truncated else []
    extras += [f"{stats.dropped} dropped"] if stats.dropped else []
    return text + ("; " + ", ".join(extras) + " at sft.max_seq_length" if extras else "")


# ---------------------------------------------------------------- evaluation and the end


def sft_eval(cfg: Config, model, tokenizer, rows: list[dict], acc=None) -> dict:
    """Held-out greedy accuracy; in the tiny world also the accuracy of each forced answer style.
    With several processes (`acc`) each scores its share of the problems, gathered (evaluation runs once)."""
    if acc is None:
        engine = HFEngine(model, tokenizer, cfg.rollout.generation_batch_size)
    else:
        engine = HFEngine(model, tokenizer, cfg.rollout.generation_batch_size,
                          gather=dist.gather_for_generation(acc, model), synced=dist.is_sharded(acc))
    if cfg.tools:  # a cold start for tool use is evaluated taking turns with its tools, as GRPO will sample it
        r = cfg.rollout
        engine = MultiTurnEngine(engine, tokenizer, load_toolbox(cfg.tools), r.tool_call_format, r.max_turns,
                                 r.max_tool_calls, cfg.model.name_or_path)
    kwargs = dict(system_prompt=cfg.data.system_prompt, instruction=cfg.data.instruction,
                  prompt_format=cfg.data.prompt_format, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed,
                  tools=prompt_tools(cfg))
    result = evaluate_across(acc, engine, tokenizer, rows, **kwargs)
    metrics = {"eval/greedy_accuracy": result.greedy_accuracy, "eval/mean_length": result.mean_length,
               "eval/reasoning_share": result.reasoning_share,
               **({"eval/tool_share": result.tool_share} if result.tool_share is not None else {})}
    if cfg.data.source == "tiny_arith":
        for style, prefill in tiny_style_prefills().items():
            forced = evaluate_across(acc, engine, tokenizer, rows, prefill=prefill, **kwargs)
            metrics[f"eval/forced_{style}_accuracy"] = forced.greedy_accuracy
    return metrics


def _finish(cfg: Config, acc, model, tokenizer, state: SFTState, metrics: dict, stats: ChatStats, logger,
            session_seconds: float) -> dict:
    final = save_final(cfg.run_dir / "final", acc, model, tokenizer, cfg.model.lora.save)
    summary = {"steps": state.step, "wall_seconds": state.wall_seconds + session_seconds, "final_model": str(final),
               "processes": acc.num_processes, "strategy": dist.strategy_name(acc),
               "target_tokens": state.target_tokens, "samples": stats.samples, "conversations": stats.conversations,
               "truncated": stats.truncated, "dropped": stats.dropped, "split_conversations": stats.split_conversations,
               "skipped_nonfinite": state.skipped_nonfinite}
    summary |= {f"{k.split('/')[-1]}_before": v for k, v in state.eval_before.items()}
    summary |= {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("eval/")}
    if logger is not None:
        (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.close()
        console.print(f"[bold]done[/]: {state.step} steps; final model {final}", soft_wrap=True)
    return summary
