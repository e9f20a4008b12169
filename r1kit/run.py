"""Everything around the GRPO loop: set-up, prompt schedule, eval, logging, checkpoints, summary.

trainer.py holds the algorithm; this module holds the bookkeeping, so each stays one screen a piece.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from r1kit.checkpoint import list_checkpoints, resolve_resume, save_checkpoint, save_final
from r1kit.config import Config, ConfigError, save_config, to_dict
from r1kit.data.benchmarks import checker_for
from r1kit.data.sources import load_rows
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.evaluate import evaluate
from r1kit.logging import MetricsLogger, append_jsonl, console, format_metrics, progress_bar
from r1kit.model_files import check_context
from r1kit.models import load_model, load_tokenizer, pick_device, resolve_model_path
from r1kit.rewards import build_rewards
from r1kit.reference import AdapterDisabledReference, LocalReference, RemoteReference
from r1kit.rollout.hf import HFEngine, eos_ids
from r1kit.rollout.http import ServiceClient
from r1kit.rollout.remote import START_HINT, RemoteEngine
from r1kit.types import SamplingParams


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    accuracy_before: float | None = None
    reasoning_share_before: float | None = None  # share of greedy answers that show reasoning, at the start
    eval_history: list = field(default_factory=list)  # (step, greedy accuracy)
    wall_seconds: float = 0.0  # training wall time of earlier sessions of this run (resume)


@dataclass
class Run:
    cfg: Config
    accelerator: Accelerator
    model: torch.nn.Module
    reference: object | None  # r1kit.reference.Reference; None when beta == 0
    tokenizer: object
    engine: object
    reward_funcs: list
    train_rows: list[dict]
    eval_rows: list[dict]
    optimizer: torch.optim.Optimizer
    scheduler: object
    logger: MetricsLogger
    progress: object
    state: RunState
    started: float = field(default_factory=time.time)

    def training_seconds(self) -> float:
        """Wall time of this run so far, earlier (resumed-from) sessions included."""
        return self.state.wall_seconds + time.time() - self.started

    def should_continue(self) -> bool:
        """Steps left and, if train.max_minutes is set, time left in the budget."""
        budget = self.cfg.train.max_minutes
        return self.state.step < self.cfg.train.max_steps and not (budget and self.training_seconds() >= 60 * budget)

    def bar_info(self, m: dict) -> str:
        return format_metrics(m, ["reward", "rewards/accuracy/mean", "completion/mean_length", "time/step"])


# ---------------------------------------------------------------- set-up


def setup_run(cfg: Config) -> Run:
    run_dir = cfg.run_dir
    if cfg.train.resume_from and cfg.model.lora.enabled:
        raise ConfigError("train.resume_from with model.lora.enabled is not supported yet: checkpoints store merged "
                         "weights, not the adapter and its optimizer state")
    resume_dir = resolve_resume(cfg.train.resume_from, run_dir / "checkpoints") if cfg.train.resume_from else None
    if resume_dir is None and (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"run directory {run_dir} already holds a run; pick another name= or resume it "
                              "with train.resume_from=latest")
    # rewards and data first: a bad name or dataset fails in seconds, before anything is written or loaded
    reward_funcs = _build_rewards(cfg)
    raw_train_rows = load_rows(cfg.data, cfg.data.split, size=None)
    eval_rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    pick_device(cfg.model.device)  # fails clearly on device=cuda without a GPU
    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    torch.manual_seed(cfg.seed)

    model_cfg = dataclasses.replace(cfg.model, name_or_path=str(resume_dir), gguf_file=None) if resume_dir else cfg.model
    tokenizer = load_tokenizer(model_cfg.name_or_path, model_cfg.trust_remote_code, model_cfg.gguf_file)
    model = load_model(model_cfg, tokenizer)
    reference = make_reference(cfg, tokenizer, accelerator.device, policy=model)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate,
                                  betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                                  weight_decay=cfg.train.weight_decay)
    name = "constant_with_warmup" if cfg.train.lr_scheduler == "constant" else cfg.train.lr_scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=max(cfg.train.max_steps * cfg.algo.num_iterations, 1))
    model, optimizer = accelerator.prepare(model, optimizer)
    state = RunState()
    if resume_dir is not None:
        saved = torch.load(resume_dir / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = RunState(**saved["run_state"])
        console.print(f"resumed from {resume_dir} at step {state.step}")

    train_rows = _with_prompts(raw_train_rows, cfg, tokenizer)
    _check_context(cfg, model, tokenizer, train_rows, eval_rows)
    run = Run(cfg, accelerator, model, reference, tokenizer, make_engine(cfg, model, tokenizer),
              reward_funcs,
              train_rows, eval_rows, optimizer, scheduler,
              MetricsLogger(run_dir, cfg.log, to_dict(cfg), resume=resume_dir is not None),
              progress_bar(cfg.log.progress), state)
    if cfg.eval.before and state.step == 0:
        before = run_eval(run, "before")
        state.accuracy_before = before["eval/greedy_accuracy"]
        state.reasoning_share_before = before["eval/reasoning_share"]
    return run


def _build_rewards(cfg: Config) -> list:
    entries = [{"name": r.name, "weight": r.weight, **r.params} for r in cfg.rewards]
    for entry in entries:  # DAPO's overlong punishment is measured against the rollout's own length cap
        if entry["name"] == "soft_overlong":
            entry.setdefault("max_completion_length", cfg.rollout.max_completion_length)
    try:
        return build_rewards(entries)
    except (ValueError, KeyError, ImportError, AttributeError) as e:
        raise ConfigError(f"rewards: {e}") from e


def _with_path(model_cfg, path: str):
    return dataclasses.replace(model_cfg, name_or_path=path)


def _with_prompts(rows: list[dict], cfg: Config, tokenizer) -> list[dict]:
    """Rows plus their prompt text and token ids (encoded once, reused every step)."""
    out = []
    for row in rows:
        d = cfg.data
        ids = encode_prompt(tokenizer, build_messages(row["question"], d.system_prompt, d.instruction), d.prompt_format)
        out.append({**row, "prompt_text": tokenizer.decode(ids), "prompt_ids": ids})
    return out


def _check_context(cfg: Config, model, tokenizer, train_rows: list[dict], eval_rows: list[dict]) -> None:
    """The longest prompt plus the longest completion fits the model's context, before any step runs."""
    def longest(rows):
        return max((len(r["prompt_ids"]) for r in rows), default=0)
    check_context(model, longest(train_rows), cfg.rollout.max_completion_length, "rollout.max_completion_length")
    check_context(model, longest(_with_prompts(eval_rows, cfg, tokenizer)), cfg.eval.max_new_tokens,
                  "eval.max_new_tokens")


def make_engine(cfg: Config, model, tokenizer):
    """The rollout engine the recipe names; vLLM is imported only for the vllm and server engines.

    vllm and server engines start from the model's files, then receive the policy's current
    weights at once, so a resumed run samples from its checkpoint, not from the start model.
    """
    engine = cfg.rollout.engine
    if engine == "hf":
        return HFEngine(model, tokenizer, cfg.rollout.generation_batch_size)
    if engine == "vllm":
        from r1kit.rollout.vllm import VLLMEngine

        vllm_engine = VLLMEngine(resolve_model_path(cfg.model.name_or_path), tokenizer, cfg.rollout.vllm,
                                 dtype=cfg.model.dtype, seed=cfg.seed, policy=model)
        vllm_engine.update_weights(model)
        return vllm_engine
    if engine == "server":
        s = cfg.services
        client = ServiceClient.from_services("generation server", s.generation_url, s, hint=START_HINT)
        remote = RemoteEngine(client, cfg.model.name_or_path, tokenizer, s.weight_transfer, s.shared_dir,
                              stop_ids=eos_ids(getattr(model, "module", model), tokenizer))
        remote.update_weights(model)
        return remote
    raise ValueError(f"rollout.engine={engine!r} is not available; expected 'hf', 'vllm' or 'server'")


def make_reference(cfg: Config, tokenizer, device, policy=None):
    """The KL reference: None when beta == 0 (nothing is loaded); a `r1kit serve-ref` server when
    services.reference_url is set; with LoRA, the policy with its adapters disabled; else a frozen
    copy of the start model in this process."""
    if cfg.algo.beta == 0:
        return None
    if cfg.services.reference_url:
        client = ServiceClient.from_services("reference server", cfg.services.reference_url, cfg.services,
                                             hint="Start it with `r1kit serve-ref MODEL`.")
        return RemoteReference(client, cfg.model.name_or_path, cfg.rollout.temperature)
    if cfg.model.lora.enabled and policy is not None:
        return AdapterDisabledReference(policy, cfg.rollout.temperature, cfg.train.micro_batch_size)
    ref_model = load_model(_with_path(cfg.model, cfg.model.name_or_path), tokenizer).to(device)
    return LocalReference(ref_model, cfg.rollout.temperature, cfg.train.micro_batch_size)


# ---------------------------------------------------------------- per-step helpers


def _step_seed(seed: int, step: int, draw: int) -> int:
    """One integer per (seed, step, draw); draw > 0 are DAPO's extra sampling rounds of a step."""
    if draw == 0:
        return seed * 1_000_003 + step
    return int(hashlib.sha256(f"{seed}/{step}/{draw}".encode()).hexdigest()[:15], 16)


def step_prompt_indices(seed: int, step: int, count: int, num_rows: int, draw: int = 0) -> list[int]:
    """Which rows step `step` (sampling round `draw`) trains on: a pure function of its arguments,
    so a resumed run replays exactly."""
    rng = random.Random(_step_seed(seed, step, draw))
    return [rng.randrange(num_rows) for _ in range(count)]


def sampling_params(cfg: Config, step: int, draw: int = 0) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(max_new_tokens=r.max_completion_length, temperature=r.temperature, top_p=r.top_p,
                          top_k=r.top_k, seed=_step_seed(cfg.seed, step, draw))


def run_eval(run: Run, when: str) -> dict:
    e, d = run.cfg.eval, run.cfg.data
    result = evaluate(run.engine, run.tokenizer, run.eval_rows, system_prompt=d.system_prompt,
                      instruction=d.instruction, prompt_format=d.prompt_format, max_new_tokens=e.max_new_tokens,
                      n_samples=e.n_samples, temperature=e.temperature, top_p=e.top_p, seed=run.cfg.seed,
                      extract=e.extract, checker=checker_for(d.source, e.checker))
    metrics = {f"eval/{k}": v for k, v in result.summary().items()}
    run.state.eval_history.append((run.state.step, result.greedy_accuracy))
    console.print(f"eval ({when}, step {run.state.step}): " + format_metrics(metrics, sorted(metrics)))
    return metrics


def maybe_eval(run: Run, step: int) -> dict:
    every = run.cfg.eval.every
    if every and step % every == 0 and step < run.cfg.train.max_steps:
        return run_eval(run, "during")
    return {}


def log_step(run: Run, step: int, metrics: dict, rows, completions, scored, advantages) -> None:
    run.logger.log(step, metrics)
    for label, count in scored.errors.items():  # only with train.reward_on_error=none: the run goes on
        if count:
            console.print(f"[yellow]step {step}: reward {label!r} raised on {count} call(s); scored None "
                          f"(rewards/{label}/errors in metrics.jsonl)[/]")
    log = run.cfg.log
    if log.console_every and step % log.console_every == 0:
        console.print(f"step {step}: " + format_metrics(metrics, [
            "reward", "rewards/accuracy/mean", "completion/mean_length", "groups/zero_variance_fraction",
            "grad_norm", "time/generate", "time/update"]))
    if log.samples_every and (step % log.samples_every == 0 or step == 1):
        for i, row in enumerate(rows):
            group = [j for j, c in enumerate(completions) if c.prompt_index == i]
            append_jsonl(run.cfg.run_dir / "samples.jsonl", {
                "step": step, "prompt": row["prompt_text"], "answer": row["answer"],
                "completions": [completions[j].text for j in group],
                "finish_reasons": [completions[j].finish_reason for j in group],
                "rewards": {k: [v[j] for j in group] for k, v in scored.per_func.items()},
                "total": [scored.total[j] for j in group], "advantages": [advantages[j].item() for j in group]})


def maybe_checkpoint(run: Run, step: int) -> None:
    every = run.cfg.train.save_every
    if every and step % every == 0:
        run.state.wall_seconds += time.time() - run.started
        run.started = time.time()
        state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                 "run_state": run.state.__dict__, "torch_rng": torch.get_rng_state()}
        save_checkpoint(run.cfg.run_dir / "checkpoints", step, run.accelerator.unwrap_model(run.model),
                        run.tokenizer, state, keep=run.cfg.train.keep_checkpoints)


def finish_run(run: Run) -> dict:
    cfg, state = run.cfg, run.state
    after = run_eval(run, "after") if cfg.eval.after else {}
    final = save_final(cfg.run_dir / "final", run.accelerator.unwrap_model(run.model), run.tokenizer)
    summary = {"name": cfg.name, "steps": state.step, "accuracy_before": state.accuracy_before,
               "accuracy_after": after.get("eval/greedy_accuracy"),
               "reasoning_share_before": state.reasoning_share_before,
               "reasoning_share_after": after.get("eval/reasoning_share"),
               "wall_seconds": run.training_seconds(), "stopped_by_time_budget": state.step < cfg.train.max_steps,
               "eval_history": state.eval_history, "run_dir": str(cfg.run_dir), "final_model": str(final),
               "checkpoints": [str(p) for p in list_checkpoints(cfg.run_dir / "checkpoints")]}
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    run.logger.close()
    run.engine.close()
    _print_summary(summary)
    return summary


def _print_summary(s: dict) -> None:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"
    console.print(f"\n[bold]done[/]: {s['steps']} steps in {s['wall_seconds'] / 60:.1f} min; held-out greedy accuracy "
                  f"{pct(s['accuracy_before'])} -> [bold]{pct(s['accuracy_after'])}[/]")
    if s["reasoning_share_after"] is not None and s["reasoning_share_before"] is not None:
        console.print(f"answers that show reasoning: {pct(s['reasoning_share_before'])} -> "
                      f"{pct(s['reasoning_share_after'])}")
    console.print(f"run directory: {s['run_dir']}  (metrics.jsonl, samples.jsonl, summary.json, final/)")
