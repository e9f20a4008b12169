"""Everything around the GRPO loop: set-up, prompt schedule, eval, logging, checkpoints, summary.

trainer.py holds the algorithm; this module holds the bookkeeping, so each stays one screen a piece.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from transformers import get_scheduler

from r1kit import distributed as dist
from r1kit.checkpoint import list_checkpoints, load_accelerator_state, save_checkpoint, save_final
from r1kit.config import Config, ConfigError, to_dict
from r1kit.data.benchmarks import checker_for
from r1kit.data.sources import eval_target, load_rows
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.evaluate import evaluate_across
from r1kit.logging import (MetricsLogger, console, format_metrics, print_run_summary, progress_bar,
                           quiet_library_progress)
from r1kit.model_files import check_context
from r1kit.models import load_model, load_tokenizer, make_optimizer, pick_device, resolve_model_path
from r1kit.rewards import build_rewards
from r1kit.reference import AdapterDisabledReference, LocalReference, RemoteReference
from r1kit.report import phase_shares, read_run, write_report
from r1kit.rollout.hf import HFEngine, eos_ids
from r1kit.rollout.http import ServiceClient
from r1kit.rollout.multiturn import MultiTurnEngine, ToolMessages
from r1kit.rollout.remote import START_HINT, RemoteEngine
from r1kit.rollout.weights import LOCAL
from r1kit.tools.calls import check_call_format
from r1kit.tools.registry import load_toolbox
from r1kit.rundir import NonFiniteError, RunCollapsed, prepare_run_dir, resume_point, run_stopped
from r1kit.types import SamplingParams


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    accuracy_before: float | None = None
    reasoning_share_before: float | None = None  # share of greedy answers that show reasoning, at the start
    mean_length_before: float | None = None  # mean greedy completion length (tokens) on the held-out problems
    tool_share_before: float | None = None  # share of greedy answers that call a tool (runs with tools)
    eval_history: list = field(default_factory=list)  # (step, greedy accuracy)
    wall_seconds: float = 0.0  # training wall time of earlier sessions of this run (resume)
    nonfinite_steps: int = 0  # optimizer steps skipped because the gradient was NaN/inf
    in_flight: dict = field(default_factory=dict)  # asynchronous generation: batches generated, not yet trained
    signal_seen: bool = False  # some step had a group whose rewards varied (collapse is judged only after)
    collapsed_steps: int = 0  # steps in a row, up to now, in which every reward was 0


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
    logger: MetricsLogger | None  # the main process's; None on the others
    progress: object
    state: RunState
    started: float = field(default_factory=time.time)
    batches: object | None = None  # r1kit.producer's batch source, set by the loop

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
    """Everything the loop needs, on every process; only the main process writes files.

    A resumed run rebuilds the model from model.name_or_path, then `Accelerator.load_state` puts the
    checkpoint's weights and optimizer state back (LoRA adapters included), so every strategy resumes
    the same way.
    """
    acc = dist.make_accelerator(cfg.model.device, cfg.train.max_grad_norm, cfg.model.dtype)
    if not acc.is_main_process:
        console.quiet = True  # one process speaks for the run
    run_dir = cfg.run_dir
    resume = resume_point(cfg)
    resume_dir = resume.directory if resume else None
    # rewards, data and the process layout first: bad input fails in seconds, before anything is written
    dist.local_share(cfg.prompts_per_step, acc)
    _check_strategy(cfg, acc)
    reward_funcs = _build_rewards(cfg)
    load_toolbox(cfg.tools)  # a tool that does not load is one line, before any model
    raw_train_rows = load_rows(cfg.data, cfg.data.split, size=None)
    eval_rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)
    pick_device(cfg.model.device)  # fails clearly on device=cuda without a GPU
    quiet_library_progress()
    torch.manual_seed(cfg.seed)

    tokenizer, model = _load_policy(cfg)
    with dist.whole_weights_init(acc):  # the reference is replicated: frozen, forward-only
        reference = make_reference(cfg, tokenizer, acc.device, policy=model)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.train)
    name = "constant_with_warmup" if cfg.train.lr_scheduler == "constant" else cfg.train.lr_scheduler
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=max(cfg.train.max_steps * cfg.algo.num_iterations, 1))
    model, optimizer = acc.prepare(model, optimizer)
    state = RunState()
    if resume is not None:
        load_accelerator_state(acc, resume_dir)
        scheduler.load_state_dict(resume.trainer_state["scheduler"])
        state = RunState(**resume.trainer_state["run_state"])
        console.print(f"resumed from {resume_dir} at step {state.step}")

    train_rows = _with_prompts(raw_train_rows, cfg, tokenizer)
    _check_context(cfg, model, tokenizer, train_rows, eval_rows)
    check_saved_dtype(cfg, acc, model)
    engine = make_engine(cfg, model, tokenizer, acc)
    # the run directory changes only now: a resume that fails above (a torn optimizer state, a model that does
    # not fit) leaves config.yaml and the logs as they were; every process has checked it before
    acc.wait_for_everyone()
    if acc.is_main_process:
        prepare_run_dir(cfg, resume)
    logger = MetricsLogger(run_dir, cfg.log, to_dict(cfg), resume=resume_dir is not None) if acc.is_main_process else None
    run = Run(cfg, acc, model, reference, tokenizer, engine, reward_funcs,
              train_rows, eval_rows, optimizer, scheduler, logger, progress_bar(cfg.log.progress and acc.is_main_process),
              state)
    if acc.num_processes > 1:
        console.print(f"{acc.num_processes} processes, strategy {dist.strategy_name(acc)}: each samples "
                      f"{cfg.prompts_per_step // acc.num_processes} of the {cfg.prompts_per_step} prompts per step")
    if cfg.eval.before and state.step == 0:
        before = run_eval(run, "before")
        state.accuracy_before = before["eval/greedy_accuracy"]
        state.reasoning_share_before = before["eval/reasoning_share"]
        state.mean_length_before = before["eval/mean_length"]
        state.tool_share_before = before.get("eval/tool_share")
    return run


def _load_policy(cfg: Config):
    """Tokenizer and model; a path that is missing, torn or not on the hub is one error line naming it."""
    name = cfg.model.name_or_path
    try:
        tokenizer = load_tokenizer(name, cfg.model.trust_remote_code, cfg.model.gguf_file)
        check_tool_template(cfg, tokenizer)
        return tokenizer, load_model(cfg.model, tokenizer)
    except (OSError, ValueError, SafetensorError) as e:  # missing, torn, or not a model (not our own errors)
        if isinstance(e, ConfigError):
            raise
        where = "could not be read" if os.path.exists(name) else "is not a local directory, and the hub did not provide it"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ConfigError(f"model.name_or_path={name!r} {where} ({first})") from None


def check_tool_template(cfg: Config, tokenizer) -> None:
    """With tools: the chat template reads the configured call format and can insert a tool message (before the model loads)."""
    if not cfg.tools:
        return
    check_call_format(tokenizer, cfg.rollout.tool_call_format, cfg.model.name_or_path)
    try:
        ToolMessages(tokenizer, cfg.model.name_or_path)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def prompt_tools(cfg: Config) -> list[dict] | None:
    """The tools' JSON schemas for the chat template to write into prompts (tool_call_format=template)."""
    if not cfg.tools or cfg.rollout.tool_call_format != "template":
        return None
    return load_toolbox(cfg.tools).schemas


def check_model_strategy(cfg: Config, acc) -> None:
    """The model's own settings this platform or strategy cannot run (GRPO and SFT), refused before anything
    is written."""
    from r1kit.models import require_bitsandbytes

    if cfg.model.load_in_4bit:
        require_bitsandbytes("model.load_in_4bit")
    if cfg.train.optim.endswith("8bit"):  # SFT's optimizer is also the kind train.optim names
        require_bitsandbytes(f"train.optim={cfg.train.optim}")
    if cfg.model.lora.enabled and dist.is_sharded(acc):
        raise ConfigError(f"model.lora.enabled with {dist.strategy_name(acc)} is not supported: the adapters are "
                          "small, so shard the frozen base with zero2 (recipes/accelerate/zero2.yaml) or train "
                          "without LoRA")


def check_saved_dtype(cfg: Config, acc, model) -> None:
    """The recipe's model.dtype holds under every strategy (GRPO and SFT). DeepSpeed casts the weights to its
    own precision; make_accelerator turns ZeRO-3's bf16/fp16 on where the launch config leaves precision to the
    recipe, so what remains is a launch config whose mixed_precision contradicts the recipe (fp16 for a bf16
    recipe, bf16 for a float32 one): refused here, after prepare, before anything is written."""
    if cfg.model.load_in_4bit:
        return  # 4-bit weights are packed integers; the compute dtype is bitsandbytes'
    largest = max(acc.unwrap_model(model).parameters(), key=lambda p: getattr(p, "ds_numel", p.numel()))
    held = getattr(largest, "ds_tensor", largest).dtype  # ZeRO-3: the partition's
    if held != getattr(torch, cfg.model.dtype):
        raise ConfigError(f"model.dtype={cfg.model.dtype}, but {dist.strategy_name(acc)} holds the weights in "
                          f"{str(held).removeprefix('torch.')} (the launch config's mixed_precision is "
                          f"{acc.mixed_precision!r}): set mixed_precision to match in the accelerate config, or "
                          f"model.dtype={str(held).removeprefix('torch.')}")


def _check_strategy(cfg: Config, acc) -> None:
    """Combinations this version or platform cannot run, refused before anything is written."""
    strategy = dist.strategy_name(acc)
    check_model_strategy(cfg, acc)
    if cfg.rollout.engine == "server" and dist.is_sharded(acc) and strategy not in ("zero3", "fsdp2"):
        raise ConfigError(f"rollout.engine=server with {strategy} is not supported (the weight push gathers ZeRO-3 or "
                          "FSDP2 shards one layer at a time); use recipes/accelerate/zero3.yaml or fsdp2.yaml")
    _check_async(cfg.rollout.asynchronous, strategy, cfg.rollout.engine)
    if cfg.rollout.engine == "vllm" and acc.num_processes > 1:
        raise ConfigError("rollout.engine=vllm (colocated) runs in one process; with several training processes use "
                          "rollout.engine=server (every rank samples from one `r1kit serve-gen`) or hf")


def _check_async(a, strategy: str, engine: str = "hf") -> None:
    """Asynchronous generation: a strategy whose every rank holds whole weights (each rank's worker copies its
    own), one process with the server, and cores this process may use (a cgroup or taskset may hold fewer)."""
    if a.mode == "sync":
        return
    if engine == "server" and strategy != "single":
        # every rank would wait for the server to hold its batch's version, and the main rank could push the next
        # one only once every rank had sampled: cross-rank coordination the background thread cannot do with the
        # trainer's collectives (r1kit.rollout.remote_worker)
        raise ConfigError(f"rollout.asynchronous.mode={a.mode} with rollout.engine=server runs in one training process "
                          f"(strategy {strategy} has several); with several processes use rollout.engine=hf (DDP, "
                          "each rank its own generation worker) or rollout.asynchronous.mode=sync with the server")
    if strategy not in ("single", "ddp"):
        raise ConfigError(f"rollout.asynchronous.mode={a.mode} with strategy {strategy} is not supported yet: it runs "
                          "on one process or under DDP (recipes/accelerate/ddp.yaml), each rank with its own "
                          "generation worker; or use rollout.asynchronous.mode=sync")
    available = os.sched_getaffinity(0)
    for key in ("generator_cores", "trainer_cores"):
        missing = sorted(set(getattr(a, key)) - available)
        if missing:
            raise ConfigError(f"rollout.asynchronous.{key}={getattr(a, key)}: CPU {missing} is not available to "
                              f"this process (available: {sorted(available)})")


_GRADED_REWARDS = ("accuracy", "length")  # built-ins that grade answers: they take the data source's checker


def _build_rewards(cfg: Config) -> list:
    entries = [{"name": r.name, "weight": r.weight, **r.params} for r in cfg.rewards]
    for entry in entries:  # DAPO's overlong punishment is measured against the rollout's own length cap
        if entry["name"] == "soft_overlong":
            entry.setdefault("max_completion_length", cfg.rollout.max_completion_length)
        if entry["name"] in _GRADED_REWARDS:  # grade by the source's answer type, as evaluation does
            entry.setdefault("checker", checker_for(cfg.data.source, "auto"))
    try:
        return build_rewards(entries)
    except (ValueError, KeyError, ImportError, AttributeError) as e:
        raise ConfigError(f"rewards: {e}") from e


def _with_path(model_cfg, path: str):
    return dataclasses.replace(model_cfg, name_or_path=path)


def _with_prompts(rows: list[dict], cfg: Config, tokenizer) -> list[dict]:
    """Rows plus their prompt text and token ids (encoded once, reused every step)."""
    out, tools = [], prompt_tools(cfg)
    for row in rows:
        d = cfg.data
        ids = encode_prompt(tokenizer, build_messages(row["question"], d.system_prompt, d.instruction), d.prompt_format,
                            tools)
        out.append({**row, "prompt_text": tokenizer.decode(ids), "prompt_ids": ids})
    return out


def _check_context(cfg: Config, model, tokenizer, train_rows: list[dict], eval_rows: list[dict]) -> None:
    """The longest prompt plus the longest completion fits the model's context, before any step runs."""
    def longest(rows):
        return max((len(r["prompt_ids"]) for r in rows), default=0)
    check_context(model, longest(train_rows), cfg.rollout.max_completion_length, "rollout.max_completion_length",
                  cfg.data.source)
    check_context(model, longest(_with_prompts(eval_rows, cfg, tokenizer)), cfg.eval.max_new_tokens,
                  "eval.max_new_tokens", eval_target(cfg.data)[0])


def make_engine(cfg: Config, model, tokenizer, acc=None):
    """The rollout engine the recipe names, taking turns with tools when the recipe lists some."""
    engine = _single_turn_engine(cfg, model, tokenizer, acc)
    if not cfg.tools:
        return engine
    r = cfg.rollout
    return MultiTurnEngine(engine, tokenizer, load_toolbox(cfg.tools), r.tool_call_format, r.max_turns,
                           r.max_tool_calls, cfg.model.name_or_path)


def _single_turn_engine(cfg: Config, model, tokenizer, acc=None):
    """The rollout engine rollout.engine names; vLLM is imported only for the vllm and server engines.

    vllm and server engines start from the model's files, then receive the policy's current
    weights at once, so a resumed run samples from its checkpoint, not from the start model.
    With several processes the server engine is shared: only the main process pushes weights.
    """
    engine = cfg.rollout.engine
    if engine == "hf":
        if acc is None:
            return HFEngine(model, tokenizer, cfg.rollout.generation_batch_size, autocast=cfg.rollout.autocast)
        return HFEngine(model, tokenizer, cfg.rollout.generation_batch_size,
                        gather=dist.gather_for_generation(acc, model), synced=dist.is_sharded(acc),
                        autocast=cfg.rollout.autocast)
    if engine == "vllm":
        from r1kit.rollout.vllm import VLLMEngine

        vllm_engine = VLLMEngine(resolve_model_path(cfg.model.name_or_path), tokenizer, cfg.rollout.vllm,
                                 dtype=cfg.model.dtype, seed=cfg.seed, policy=model, lora_sync_mode=cfg.model.lora.sync)
        vllm_engine.update_weights(model)
        return vllm_engine
    if engine == "server":
        s = cfg.services
        client = ServiceClient.from_services("generation server", s.generation_url, s, hint=START_HINT)
        remote = RemoteEngine(client, cfg.model.name_or_path, tokenizer, s.weight_transfer, s.shared_dir,
                              stop_ids=eos_ids(getattr(model, "module", model), tokenizer),
                              pushes=acc is None or acc.is_main_process, barrier=acc.wait_for_everyone if acc else None,
                              bucket_mb=s.weight_bucket_mb, gatherer=dist.weights_gatherer(acc) if acc else LOCAL,
                              transport_address=s.transport_address, lora_sync_mode=cfg.model.lora.sync,
                              policy=model)
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


def sampling_params(cfg: Config, step: int, draw: int = 0, prompt_offset: int = 0) -> SamplingParams:
    """How step `step` samples; prompt_offset is the index in the step of this process's first prompt."""
    r = cfg.rollout
    return SamplingParams(max_new_tokens=r.max_completion_length, temperature=r.temperature, top_p=r.top_p,
                          top_k=r.top_k, seed=_step_seed(cfg.seed, step, draw), prompt_offset=prompt_offset)


def run_eval(run: Run, when: str) -> dict:
    """Held-out evaluation, once per run (each process scores its share of the problems, gathered)."""
    e, d = run.cfg.eval, run.cfg.data
    result = evaluate_across(run.accelerator, run.engine, run.tokenizer, run.eval_rows, system_prompt=d.system_prompt,
                             instruction=d.instruction, prompt_format=d.prompt_format, max_new_tokens=e.max_new_tokens,
                             n_samples=e.n_samples, temperature=e.temperature, top_p=e.top_p, seed=run.cfg.seed,
                             extract=e.extract, checker=checker_for(d.source, e.checker), tools=prompt_tools(run.cfg))
    metrics = {f"eval/{k}": v for k, v in result.summary().items()}
    run.state.eval_history.append((run.state.step, result.greedy_accuracy))
    if run.logger is not None:
        run.logger.log_eval(run.state.step, when, metrics)
    console.print(f"eval ({when}, step {run.state.step}): " + format_metrics(metrics, sorted(metrics)))
    return metrics


def maybe_eval(run: Run, step: int) -> dict:
    every = run.cfg.eval.every
    if every and step % every == 0 and step < run.cfg.train.max_steps:
        return run_eval(run, "during")
    return {}


def log_step(run: Run, step: int, metrics: dict, rows, completions, scored, advantages) -> None:
    """metrics.jsonl (global metrics), console lines and samples.jsonl (the main process's own groups)."""
    if run.logger is None:  # not the main process
        return
    run.logger.log(step, metrics)
    for label, count in scored.errors.items():  # only with train.reward_on_error=none: the run goes on
        if count:
            console.print(f"[yellow]step {step}: reward {label!r} raised on {count} call(s); scored None "
                          f"(rewards/{label}/errors in metrics.jsonl)[/]")
    if unscored := metrics.get("rewards/unscored_fraction", 0.0):
        console.print(f"[yellow]step {step}: no reward function scored {unscored:.0%} of the completions (each returned "
                      "None or NaN), so their reward counts as 0 (rewards/unscored_fraction in metrics.jsonl)[/]")
    log = run.cfg.log
    if log.console_every and step % log.console_every == 0:
        console.print(f"step {step}: " + format_metrics(metrics, [
            "reward", "rewards/accuracy/mean", "completion/mean_length", "groups/zero_variance_fraction",
            "grad_norm", "time/generate", "time/update"]))
    if log.samples_every and (step % log.samples_every == 0 or step == 1):
        records = []
        for i, row in enumerate(rows):
            group = [j for j, c in enumerate(completions) if c.prompt_index == i]
            records.append({
                "step": step, "prompt": row["prompt_text"], "answer": row["answer"],
                "completions": [completions[j].text for j in group],
                "finish_reasons": [completions[j].finish_reason for j in group],
                **({"turns": [completions[j].turns for j in group], "tool_calls": [completions[j].tool_calls for j in group]}
                   if run.cfg.tools else {}),
                "rewards": {k: [v[j] for j in group] for k, v in scored.per_func.items()},
                "total": [scored.total[j] for j in group], "advantages": [advantages[j].item() for j in group]})
        run.logger.log_samples(step, records)


def check_finite(run: Run, skipped: bool) -> None:
    """After an optimizer step: count a skipped (non-finite gradient) step, and stop when the weights
    themselves are no longer finite or too many steps were skipped; nothing non-finite is ever saved."""
    cfg, state = run.cfg, run.state
    last = list_checkpoints(cfg.run_dir / "checkpoints")
    intact = f"the last checkpoint ({last[-1].name}) is intact" if last else "no checkpoint was written yet"
    if not dist.weights_finite(run.accelerator, run.model):
        raise NonFiniteError(f"the weights became NaN/inf at step {state.step + 1} (a learning rate or reward too "
                             f"large?); {intact}, and nothing non-finite was saved")
    if skipped:
        state.nonfinite_steps += 1
        console.print(f"[yellow]step {state.step + 1}: the gradient was NaN/inf; the update was skipped "
                      f"({state.nonfinite_steps} of at most {cfg.train.max_nonfinite_steps})[/]")
        if state.nonfinite_steps > cfg.train.max_nonfinite_steps:
            raise NonFiniteError(f"{state.nonfinite_steps} steps had a NaN/inf gradient (train.max_nonfinite_steps="
                                 f"{cfg.train.max_nonfinite_steps}): check the rewards and train.learning_rate; {intact}")


def check_collapse(run: Run, rewards: torch.Tensor, metrics: dict) -> None:
    """A collapsed run: its learning signal was there (some group's rewards varied) and is gone, every reward
    of every process 0 for train.collapse_steps steps in a row (a learning rate or update that wrecked the
    policy, a reward that stopped matching). Said once per collapse (on_collapse=warn), or the run stops with
    RunCollapsed (stop); the checkpoints from before the collapse are named. Every process calls this."""
    cfg, state = run.cfg, run.state
    if not cfg.train.collapse_steps:
        return
    all_zero = not dist.all_max(run.accelerator, int(bool((rewards != 0).any())))  # rewards: (B*G,) this process's
    state.collapsed_steps = state.collapsed_steps + 1 if all_zero and state.signal_seen else 0
    state.signal_seen |= metrics["groups/zero_variance_fraction"] < 1
    if state.collapsed_steps != cfg.train.collapse_steps:
        return
    first = state.step - state.collapsed_steps + 1
    earlier = [p.name for p in list_checkpoints(cfg.run_dir / "checkpoints") if int(p.name.split("-")[1]) < first]
    message = (f"the run collapsed: every reward was 0 in steps {first}-{state.step} ({state.collapsed_steps} steps, "
               f"train.collapse_steps) after earlier steps had a learning signal; checkpoints from before: "
               f"{', '.join(earlier) or 'none'}. A learning rate too large? (train.on_collapse={cfg.train.on_collapse})")
    if cfg.train.on_collapse == "stop":
        raise RunCollapsed(message)
    console.print(f"[yellow]{message}[/]")


def stop_on_signal(run: Run, signum: int) -> None:
    """Checkpoint the finished step, close the run's files, and raise RunStopped with the resume command."""
    step = run.state.step
    if not (run.cfg.train.save_every and step % run.cfg.train.save_every == 0):  # not just saved by the loop
        maybe_checkpoint(run, step, force=True)
    run.engine.close()
    if run.logger is not None:
        run.logger.close()
    raise run_stopped(run.cfg, step, signum)


def maybe_checkpoint(run: Run, step: int, force: bool = False) -> None:
    every = run.cfg.train.save_every
    if force or (every and step % every == 0):
        run.state.wall_seconds += time.time() - run.started
        run.started = time.time()
        run.state.in_flight = run.batches.in_flight() if run.batches is not None else {}
        state = {"scheduler": run.scheduler.state_dict(), "run_state": dataclasses.asdict(run.state)}
        save_checkpoint(run.cfg.run_dir / "checkpoints", step, run.accelerator, run.model, run.tokenizer, state,
                        keep=run.cfg.train.keep_checkpoints, lora_save=run.cfg.model.lora.save)


def finish_run(run: Run) -> dict:
    cfg, state = run.cfg, run.state
    after = run_eval(run, "after") if cfg.eval.after else {}
    replicas = dist.replicas_identical(run.accelerator, run.model)
    if replicas is False:  # a silent divergence would make every later step wrong: stop loudly
        raise RuntimeError("the training processes hold different weights at the end of the run "
                           f"(strategy {dist.strategy_name(run.accelerator)}): please report this as a bug")
    final = save_final(cfg.run_dir / "final", run.accelerator, run.model, run.tokenizer, cfg.model.lora.save)
    summary = {"name": cfg.name, "steps": state.step, "accuracy_before": state.accuracy_before,
               "accuracy_after": after.get("eval/greedy_accuracy"),
               "reasoning_share_before": state.reasoning_share_before,
               "reasoning_share_after": after.get("eval/reasoning_share"),
               "mean_length_before": state.mean_length_before, "mean_length_after": after.get("eval/mean_length"),
               **({"tool_share_before": state.tool_share_before, "tool_share_after": after.get("eval/tool_share")}
                  if cfg.tools else {}),
               "wall_seconds": run.training_seconds(), "stopped_by_time_budget": state.step < cfg.train.max_steps,
               "eval_history": state.eval_history, "run_dir": str(cfg.run_dir), "final_model": str(final),
               "processes": run.accelerator.num_processes, "strategy": dist.strategy_name(run.accelerator),
               "replicas_identical": replicas,
               "checkpoints": [str(p) for p in list_checkpoints(cfg.run_dir / "checkpoints")]}
    run.engine.close()
    if run.logger is not None:  # the main process writes
        (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        run.logger.close()
        report = write_report(cfg.run_dir) if cfg.log.report else None
        print_run_summary(summary, phase_shares(read_run(cfg.run_dir)), report)
    return summary
