"""Cold-start SFT: teach the answer format (and, in the tiny world, the arithmetic) before RL.

Loss is on completion tokens only (the prompt is context, not a target), end-of-turn token
included so the model learns to stop. Sources:
  tiny_arith   traces of the built-in task: a seeded mix of direct answers and step-by-step
               working (see direct_share and r1kit.data.tasks for why the mix matters)
  gsm8k        the shipped GSM8K train split as Tiny-R1 traces (r1kit.data.traces): worked steps in
               <reasoning> (data.answer_tag_style), "#### N" as the <answer>, prompts styled by data.*
  *.jsonl      rows with `prompt` + `completion` strings, or `messages` (the last turn is the target)

    r1kit sft recipes/tiny/sft.yaml   # builds the shipped builtin:tiny-sft checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import torch
from transformers import get_scheduler

from r1kit.checkpoint import save_checkpoint, save_final
from r1kit.config import Config, ConfigError, save_config
from r1kit.data import tasks
from r1kit.data.sources import DataError, load_rows
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.data.traces import gsm8k_sft_samples
from r1kit.distributed import make_accelerator
from r1kit.evaluate import evaluate, tiny_style_prefills
from r1kit.logging import MetricsLogger, console, format_metrics, progress_bar, quiet_library_progress
from r1kit.models import load_model, load_tokenizer, pick_device
from r1kit.rollout.hf import HFEngine


def build_examples(cfg: Config, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, completion_ids) pairs; completion_ids end with the EOS token."""
    eos = [tokenizer.eos_token_id]
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    if cfg.sft.source == "tiny_arith":
        rows = load_rows(cfg.data, "train", size=cfg.data.train_size)
        rng = random.Random(cfg.seed)
        examples = []
        for row in rows:
            style = "direct" if rng.random() < direct_share(row, cfg.sft) else "working"
            prompt = encode_prompt(tokenizer, build_messages(row["question"], cfg.data.system_prompt))
            examples.append((prompt, encode(tasks.trace(row, style, cfg.data.answer_tag_style)) + eos))
        return examples
    if cfg.sft.source == "gsm8k":
        pairs = _gsm8k_pairs(cfg)
    else:
        pairs = _read_chat_file(cfg.sft.source)
    return [(encode_prompt(tokenizer, messages, cfg.data.prompt_format), encode(target) + eos) for messages, target in pairs]


def _gsm8k_pairs(cfg: Config) -> list[tuple[list[dict], str]]:
    """(prompt messages, assistant trace) for every GSM8K train problem, in the recipe's prompt style."""
    rows = load_rows(dataclasses.replace(cfg.data, source="gsm8k"), "train")
    samples = gsm8k_sft_samples(rows, cfg.data.system_prompt, cfg.data.answer_tag_style, cfg.data.instruction)
    return [(s["messages"][:-1], s["messages"][-1]["content"]) for s in samples]


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


def _read_chat_file(path: str) -> list[tuple[list[dict], str]]:
    """(prompt messages, assistant target) from a jsonl of prompt/completion or messages rows."""
    if not Path(path).is_file():
        raise DataError(f"sft.source {path!r}: file not found (expected tiny_arith, gsm8k or a .jsonl file)")
    out = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" in row:
                messages = row["messages"]
                if not messages or messages[-1].get("role") != "assistant":
                    raise DataError(f"{path}:{line_no}: 'messages' must end with an assistant turn")
                out.append((messages[:-1], messages[-1]["content"]))
            elif "prompt" in row and "completion" in row:
                out.append(([{"role": "user", "content": row["prompt"]}], row["completion"]))
            else:
                raise DataError(f"{path}:{line_no}: expected 'messages' or 'prompt' + 'completion', got {sorted(row)}")
    if not out:
        raise DataError(f"sft.source {path!r} is empty")
    return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask (N, T) and labels (N, T) with -100 on prompt and padding."""
    width = max(len(p) + len(c) for p, c in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        seq = torch.tensor(p + c, dtype=torch.long)
        input_ids[i, :len(seq)] = seq
        labels[i, len(p):len(seq)] = seq[len(p):]
        mask[i, :len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def sft_eval(cfg: Config, model, tokenizer, rows: list[dict]) -> dict:
    """Held-out greedy accuracy; in the tiny world also the accuracy of each forced answer style."""
    engine = HFEngine(model, tokenizer)
    kwargs = dict(system_prompt=cfg.data.system_prompt, instruction=cfg.data.instruction,
                  prompt_format=cfg.data.prompt_format, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed)
    result = evaluate(engine, tokenizer, rows, **kwargs)
    metrics = {"eval/greedy_accuracy": result.greedy_accuracy, "eval/mean_length": result.mean_length,
               "eval/reasoning_share": result.reasoning_share}
    if cfg.data.source == "tiny_arith":
        for style, prefill in tiny_style_prefills().items():
            metrics[f"eval/forced_{style}_accuracy"] = evaluate(engine, tokenizer, rows, prefill=prefill, **kwargs).greedy_accuracy
    return metrics


def run_sft(cfg: Config) -> dict:
    acc = make_accelerator(cfg.model.device)
    if acc.num_processes > 1:
        raise ConfigError("r1kit sft runs in one process for now; launch it without accelerate launch / torchrun")
    run_dir = cfg.run_dir
    if (run_dir / "metrics.jsonl").exists() or (run_dir / "final").exists():
        raise FileExistsError(f"run directory {run_dir} already holds a run; pick another name=")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    quiet_library_progress()
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code, cfg.model.gguf_file)
    device = pick_device(cfg.model.device)
    model = load_model(cfg.model, tokenizer, seed=cfg.seed).to(device)
    examples = build_examples(cfg, tokenizer)
    eval_rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)
    s = cfg.sft
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.learning_rate,
                                  weight_decay=s.weight_decay, betas=(0.9, 0.95))
    scheduler = get_scheduler(f"{s.lr_scheduler}_with_warmup" if s.lr_scheduler == "constant" else s.lr_scheduler,
                              optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=max(s.steps, 1))
    logger = MetricsLogger(run_dir, cfg.log)
    order = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    model.train()
    with progress_bar(cfg.log.progress) as bar:
        task = bar.add_task("sft", total=s.steps, info="")
        for step in range(1, s.steps + 1):
            idx = torch.randint(len(examples), (s.batch_size,), generator=order).tolist()
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], tokenizer.pad_token_id).items()}
            loss = model(**batch).loss
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            metrics = {"train/loss": loss.item(), "train/grad_norm": grad_norm.item(), "train/lr": scheduler.get_last_lr()[0]}
            if (s.eval_every and step % s.eval_every == 0) or step == s.steps:
                metrics |= sft_eval(cfg, model, tokenizer, eval_rows)
                save_checkpoint(run_dir / "checkpoints", step, acc, model, tokenizer, {"step": step},
                                keep=cfg.train.keep_checkpoints, lora_save=cfg.model.lora.save)
                console.print(f"step {step}: " + format_metrics(metrics, sorted(metrics)))
            logger.log(step, metrics)
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    final = save_final(run_dir / "final", acc, model, tokenizer, cfg.model.lora.save)
    summary = {"steps": s.steps, "wall_seconds": time.time() - start, "final_model": str(final)}
    summary |= {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("eval/")}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    return summary
