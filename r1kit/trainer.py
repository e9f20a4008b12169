"""The GRPO loop, explicit from top to bottom.

One step, as the loop below reads:
  1. sample B prompts (a pure function of seed and step, so a resumed run sees the same ones);
     with W processes each takes B/W of them, whole groups (r1kit.distributed)
  2. generate G completions per prompt with the Engine (token ids, text, finish reason, logprobs),
     each seeded by its prompt's index in the step, so the layout does not change what is sampled;
     with asynchronous generation a worker has generated them ahead, from older weights (r1kit.producer)
  3. score them with every reward function, and the weighted total
     (DAPO dynamic sampling: draw again until B groups carry signal, at most max_sampling_rounds times)
  4. advantages, then the filters that decide which completions enter the loss
  5. (beta > 0) reference logprobs; (num_iterations > 1) old logprobs, once per batch
  6. num_iterations optimizer steps: micro-batched forward/backward of the loss, clip, AdamW
  7. the engine (or the generation worker) gets the new weights
  8. metrics (reduced over processes), samples, periodic eval, atomic checkpoint
`algo` is the config's algorithm section with the `loss_type` preset resolved (r1kit.presets);
the math is in r1kit.algo, set-up and bookkeeping in r1kit.run. This file is the algorithm's story.
"""

from __future__ import annotations

import math
import time
import torch

from r1kit.algo.advantages import compute_advantages
from r1kit.algo.filters import keep_rows
from r1kit.algo.loss import policy_loss
from r1kit.algo.offpolicy import corrections, high_entropy_mask, merge_statistics, quantile
from r1kit import distributed as dist
from r1kit.batch import Normaliser, RolloutBatch, completion_logprobs, completion_logprobs_and_entropy, make_batch
from r1kit.config import AlgoCfg, Config
from r1kit.logging import PhaseTimer, console
from r1kit.producer import make_batches
from r1kit.rollout.multiturn import tool_metrics
from r1kit.run import (Run, check_collapse, check_finite, finish_run, log_step, maybe_checkpoint, maybe_eval, setup_run,
                       stop_on_signal)
from r1kit.rundir import StopSignals


def train(cfg: Config) -> dict:
    run = setup_run(cfg)  # model, tokenizer, engine, rewards, data, optimizer, logger; resumes if asked
    model, tok, algo, acc = run.model, run.tokenizer, cfg.resolved_algo(), run.accelerator
    B, G = cfg.prompts_per_step, cfg.rollout.num_generations
    timer = PhaseTimer(sync=torch.cuda.synchronize if acc.device.type == "cuda" else None)  # ends with its kernels
    console.print(f"[bold]r1kit train[/] {cfg.name}: {cfg.train.max_steps} steps of {B} prompts x {G} completions, "
                  f"loss_type={algo.loss_type} -> {cfg.run_dir}")
    with StopSignals() as signals, run.progress as bar, make_batches(run, algo, timer) as batches:
        run.batches = batches  # a checkpoint holds what is in flight
        task = bar.add_task("grpo", total=cfg.train.max_steps, completed=run.state.step, info="")
        while run.should_continue():  # steps left (and time, with train.max_minutes)
            step = run.state.step + 1
            step_start = time.perf_counter()

            # ---------------- 1-3. prompts -> G completions each -> rewards (DAPO: redraw uninformative groups),
            #                   sampled now or, with asynchronous generation, ahead of this step (r1kit.producer)
            rows, completions, scored, sampling = batches.next(step)
            rewards = torch.tensor(scored.total, dtype=torch.float32)  # (B*G,)

            # ---------------- 4. advantages over every sampled completion, then the loss filters
            advantages = compute_advantages(rewards, G, algo.advantage_estimator, algo.scale_rewards)  # (B*G,)
            full = make_batch(completions, rows, advantages, tok.pad_token_id)
            keep = keep_rows(rewards, advantages, full.truncated, G, min_group_std=algo.min_group_std,
                             drop_negative_advantages=algo.drop_negative_advantages,
                             mask_truncated=algo.mask_truncated_completions)  # (B*G,) bool
            batch = full.select(torch.nonzero(keep).squeeze(-1))  # dropped: no backward, not in the normaliser
            dummy = full.slice(0, 1)  # what a process without rows feeds its lockstep forwards (weight 0)

            # ---------------- 5. reference logprobs (KL on) and old logprobs (several updates per batch)
            ref_logprobs = old_logprobs = None
            if run.reference is not None and len(batch):
                with timer("reference"):
                    ref_logprobs = run.reference.logprobs(batch)  # (N, C)
            if algo.num_iterations > 1:
                with timer("old_logprobs"), torch.no_grad():  # mu = 1 needs none: old = current, detached
                    old_logprobs = synced_logprobs(run, batch, dummy)  # (N, C)

            # ---------------- 6. num_iterations optimizer steps on this batch
            with timer("update"):
                updates = [update_policy(run, algo, batch, dummy, old_logprobs, ref_logprobs)
                           for _ in range(algo.num_iterations)]

            check_finite(run, skipped=any(u["update/skipped_nonfinite"] for u in updates))  # NaN/inf: skip or stop

            # ---------------- 7. the engine (or the generation worker) gets the new weights: version `step`
            with timer("weight_sync"):
                batches.publish(model, step)

            # ---------------- 8. metrics, samples, eval, checkpoint
            run.state.step = step
            metrics = dist.reduce_metrics(acc, {
                **sampling, **updates[0], **_last_iteration(updates),
                "update/kept_fraction": len(batch) / len(full),  # after the filters
                "update/rows_fraction": updates[0]["update/backward_rows"] / len(full),  # rows that ran a backward
                **full.length_metrics(), **(tool_metrics(completions) if cfg.tools else {}), **timer.pop(), "time/step": time.perf_counter() - step_start,
                "memory/max_process_gb": dist.peak_memory_gb(acc),  # the largest of any process
            })
            metrics |= maybe_eval(run, step)
            log_step(run, step, metrics, rows, completions, scored, advantages)
            check_collapse(run, rewards, metrics)  # every reward 0 for train.collapse_steps steps: warn or stop
            maybe_checkpoint(run, step)
            bar.update(task, completed=step, info=run.bar_info(metrics))
            signum = dist.all_max(acc, signals.signum)  # every process stops after the same step
            if signum:
                stop_on_signal(run, signum)
    return finish_run(run)


# ---------------------------------------------------------------- 6. one optimizer step


def update_policy(run: Run, algo: AlgoCfg, batch: RolloutBatch, dummy: RolloutBatch,
                  old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None) -> dict:
    """One optimizer step on `batch` (micro-batches accumulate); returns that step's statistics.

    old_logprobs is None with one update per batch: the ratio is then taken against the current
    logprobs, detached, so it is 1 and the gradient is the plain policy gradient. Every process runs
    the same number of micro-batches; one with fewer rows runs `dummy` with weight 0.
    """
    cfg, model, acc = run.cfg, run.model, run.accelerator
    lr = run.scheduler.get_last_lr()[0]  # the one this update uses
    model.train()
    rows = _rows_with_gradient(batch, algo, acc.num_processes)
    chunks = dist.synced_chunks(rows, cfg.train.micro_batch_size, acc)
    real = sum(1 for c in chunks if len(c))
    norm = Normaliser(*(int(x) for x in dist.all_sum(acc, [len(batch), batch.completion_mask.sum().item(), real])),
                      processes=acc.num_processes)
    high_entropy, threshold = _high_entropy_tokens(run, algo, batch, dummy)  # (N, C) bool, or None (rho = 1)
    loss_sum, stats, gaps, offpolicy = 0.0, [], [], []
    for i, chunk in enumerate(chunks):
        part = batch.select(chunk) if len(chunk) else dummy
        logprobs, entropy = completion_logprobs_and_entropy(
            model, part, cfg.rollout.temperature, entropy_grad=algo.entropy_coef > 0)  # (mb, C) each
        old = logprobs.detach() if old_logprobs is None or not len(chunk) else old_logprobs[chunk].to(logprobs.device)
        advantages, mask = part.advantages.to(logprobs.device), part.completion_mask.to(logprobs.device)
        weights, corrected = corrections(  # importance weights and masks (r1kit.algo.offpolicy), None if all off
            algo, logprobs.detach(), old, part.engine_logprobs.to(logprobs.device), advantages, mask,
            None if high_entropy is None or not len(chunk) else high_entropy[chunk].to(logprobs.device))
        loss, st = policy_loss(
            logprobs, old, advantages, mask, objective=algo.objective,
            epsilon=algo.epsilon, epsilon_high=algo.epsilon_high, dual_clip=algo.dual_clip,
            sapo_temperatures=(algo.sapo_temperature_pos, algo.sapo_temperature_neg),
            level=algo.importance_sampling_level, agg=algo.loss_agg, max_len=cfg.rollout.max_completion_length,
            beta=algo.beta, kl_estimator=algo.kl_estimator,
            ref_logprobs=None if ref_logprobs is None or not len(chunk) else ref_logprobs[chunk].to(logprobs.device),
            is_weights=weights, entropy=entropy, entropy_coef=algo.entropy_coef)
        weight = part.weight(algo.loss_agg, norm) if len(chunk) else 0.0  # share of the whole step's loss
        dist.backward(acc, model, loss * weight, last=i == len(chunks) - 1)
        if len(chunk):
            loss_sum += loss.item() * weight  # the mean over processes (reduce_metrics) is the step's loss
            stats.append(st)
            gaps.append(part.logprob_gap(logprobs.detach(), old))
            offpolicy.append(corrected)
    grad_norm, skipped = float("nan"), False
    if chunks:  # a step without any learning signal anywhere makes no update
        # max_grad_norm 0: measure without clipping. DeepSpeed has already stepped (and clipped) in backward.
        norm_value = acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm or float("inf"))
        grad_norm = float("nan") if norm_value is None else float(norm_value)
        skipped = norm_value is not None and not math.isfinite(grad_norm)  # the same on every process
        if not skipped:
            run.optimizer.step()
            run.scheduler.step()  # the schedule counts updates made, as transformers' Trainer does
        run.optimizer.zero_grad(set_to_none=True)
    return {"lr": lr, "loss": loss_sum, "grad_norm": grad_norm, "update/backward_rows": float(len(rows)), **_mean_stats(stats),
            **_merge_gaps(gaps), **merge_statistics(offpolicy), "update/skipped_nonfinite": float(skipped),
            **({} if threshold is None else {"entropy_mask/threshold": threshold})}


def synced_logprobs(run: Run, batch: RolloutBatch, dummy: RolloutBatch) -> torch.Tensor:
    """(N, C) logprobs of `batch` under the current policy, no gradient, micro-batched in lockstep."""
    cfg, acc = run.cfg, run.accelerator
    out = []
    for chunk in dist.synced_chunks(torch.arange(len(batch)), cfg.train.micro_batch_size, acc):
        logprobs = completion_logprobs(run.model, batch.select(chunk) if len(chunk) else dummy, cfg.rollout.temperature)
        if len(chunk):
            out.append(logprobs)
    return torch.cat(out) if out else torch.zeros(0, batch.completion_ids.shape[1])


def _high_entropy_tokens(run: Run, algo: AlgoCfg, batch: RolloutBatch,
                         dummy: RolloutBatch) -> tuple[torch.Tensor | None, float | None]:
    """top_entropy_quantile < 1 ("Beyond the 80/20 Rule"): the (N, C) bool of the tokens whose entropy under
    the current policy is in the top rho of the whole step's batch (every process's tokens), and that
    threshold; (None, None) when rho = 1. One extra forward without gradient: the quantile is over the
    batch, as in the paper, not over a micro-batch (TRL), so the result does not depend on micro_batch_size.
    """
    if algo.top_entropy_quantile >= 1:
        return None, None
    cfg, acc = run.cfg, run.accelerator
    parts = []
    with torch.no_grad():
        for chunk in dist.synced_chunks(torch.arange(len(batch)), cfg.train.micro_batch_size, acc):
            _, entropy = completion_logprobs_and_entropy(run.model, batch.select(chunk) if len(chunk) else dummy,
                                                         cfg.rollout.temperature)
            if len(chunk):
                parts.append(entropy.float().cpu())
    entropy = torch.cat(parts) if parts else torch.zeros(0, batch.completion_ids.shape[1])  # (N, C)
    local = entropy[batch.completion_mask.bool()]
    threshold = quantile(dist.gather_values(acc, local), 1 - algo.top_entropy_quantile)
    return high_entropy_mask(entropy, batch.completion_mask, threshold), threshold.item()


def _rows_with_gradient(batch: RolloutBatch, algo: AlgoCfg, num_processes: int) -> torch.Tensor:
    """Indices of the completions whose loss has a gradient.

    With no KL term and no entropy bonus, a completion with zero advantage (every member of a
    zero-variance group) adds exactly zero gradient, so its forward/backward is skipped; the
    normaliser still counts it (RolloutBatch.weight), so the update equals the full batch's. Not
    under DDP (every rank must run the same backward passes) nor with per-micro-batch
    normalisation (local_token_mean), where the micro-batches' composition matters.
    """
    if algo.beta > 0 or algo.entropy_coef > 0 or num_processes > 1 or algo.loss_agg == "local_token_mean":
        return torch.arange(len(batch))
    return torch.nonzero(batch.advantages != 0).squeeze(-1)


def _mean_stats(stats: list) -> dict:
    keys = ("clip_fraction", "dual_clip_fraction", "kl", "ratio_mean", "entropy")
    if not stats:
        return {k: float("nan") for k in keys}
    return {k: sum(getattr(s, k) for s in stats) / len(stats) for k in keys}


def _last_iteration(updates: list[dict]) -> dict:
    """With several updates per batch the first has ratio 1; the last shows how far the policy moved."""
    if len(updates) == 1:
        return {}
    last = updates[-1]
    return {"update/last_ratio_mean": last["ratio_mean"], "update/last_clip_fraction": last["clip_fraction"],
            "update/last_loss": last["loss"]}


def _merge_gaps(parts: list[dict]) -> dict:
    """Combine per-micro-batch engine-vs-trainer statistics into batch mean and max.

    engine/logprob_gap: |log pi_engine - log pi_trainer| per token; is/ratio: pi_old/pi_engine per token, the
    importance ratio before truncation or masking (1 when sampler and trainer agree).
    """
    tokens = sum(p["tokens"] for p in parts)
    nan = float("nan")
    return {"engine/logprob_gap_mean": sum(p["sum"] for p in parts) / tokens if tokens else nan,
            "engine/logprob_gap_max": max(p["max"] for p in parts) if parts else nan,
            "is/ratio_mean": sum(p["ratio_sum"] for p in parts) / tokens if tokens else nan,
            "is/ratio_min": min(p["ratio_min"] for p in parts) if parts else nan,
            "is/ratio_max": max(p["ratio_max"] for p in parts) if parts else nan}
