"""The GRPO loop, explicit from top to bottom.

One step, as the loop below reads:
  1. sample B prompts (a pure function of seed and step, so a resumed run sees the same ones)
  2. generate G completions per prompt with the Engine (token ids, text, finish reason, logprobs)
  3. score them with every reward function, and the weighted total
  4. group-relative advantages
  5. (beta > 0) reference logprobs from a frozen copy of the start model
  6. micro-batched forward/backward of the clipped-ratio loss, clip the gradient, AdamW step
  7. metrics, samples, periodic eval, atomic checkpoint
Set-up, batching and bookkeeping live in r1kit.run; this file is the algorithm's story.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from r1kit.algo.advantages import group_advantages, zero_variance_groups
from r1kit.algo.loss import policy_loss
from r1kit.config import Config
from r1kit.logging import PhaseTimer, console
from r1kit.rewards import combine
from r1kit.batch import completion_logprobs, make_batch
from r1kit.run import (finish_run, log_step, maybe_checkpoint, maybe_eval, sampling_params, setup_run,
                       step_prompt_indices)


def train(cfg: Config) -> dict:
    run = setup_run(cfg)  # model, tokenizer, engine, rewards, data, optimizer, logger; resumes if asked
    model, tok, acc = run.model, run.tokenizer, run.accelerator
    B, G = cfg.prompts_per_step, cfg.rollout.num_generations
    timer = PhaseTimer()
    console.print(f"[bold]r1kit train[/] {cfg.name}: {cfg.train.max_steps} steps of {B} prompts x {G} completions "
                  f"-> {cfg.run_dir}")
    with run.progress as bar:
        task = bar.add_task("grpo", total=cfg.train.max_steps, completed=run.state.step, info="")
        while run.state.step < cfg.train.max_steps:
            step = run.state.step + 1
            step_start = time.perf_counter()

            # ---------------- 1-2. sample prompts, generate G completions each
            rows = [run.train_rows[i] for i in step_prompt_indices(cfg.seed, step, B, len(run.train_rows))]
            with timer("generate"):
                completions = run.engine.generate([r["prompt_ids"] for r in rows], G, sampling_params(cfg, step))

            # ---------------- 3. rewards: each function and the weighted total
            with timer("reward"):
                columns = {k: [rows[c.prompt_index][k] for c in completions] for k in rows[0] if k != "prompt_ids"}
                columns["prompts"] = columns.pop("prompt_text")
                columns["completion_ids"] = [c.token_ids for c in completions]  # as TRL passes them
                scored = combine(run.reward_funcs, [c.text for c in completions], columns, cfg.train.reward_on_error)
                rewards = torch.tensor(scored.total, dtype=torch.float32)  # (B*G,)

            # ---------------- 4. group-relative advantages
            advantages = group_advantages(rewards, G, cfg.algo.scale_rewards)  # (B*G,)
            batch = make_batch(completions, rows, advantages, tok.pad_token_id)

            # ---------------- 5. reference logprobs (only when the KL term is on)
            ref_logprobs = None
            if run.reference is not None:
                with timer("reference"):
                    ref_logprobs = run.reference.logprobs(batch)  # (B*G, C)

            # ---------------- 6. update: micro-batches accumulate into one optimizer step
            with timer("update"):
                model.train()
                rows_to_update = _rows_with_gradient(batch, cfg, acc.num_processes)
                loss_sum, stats, mismatch = 0.0, [], []
                # (an empty tensor splits into one empty chunk: no signal means no chunk at all)
                chunks = rows_to_update.split(cfg.train.micro_batch_size) if len(rows_to_update) else ()
                for i, chunk in enumerate(chunks):
                    part = batch.select(chunk)
                    weight = part.weight(batch, cfg.algo.loss_agg)  # share of the full batch's loss
                    with nullcontext() if i == len(chunks) - 1 else acc.no_sync(model):  # DDP syncs once
                        logprobs = completion_logprobs(model, part, cfg.rollout.temperature)  # (mb, C)
                        # One update per batch: old = current (detached); the ratio is 1 and its gradient
                        # is the policy gradient. The engine's own logprobs measure the sampler mismatch.
                        loss, st = policy_loss(
                            logprobs, logprobs.detach(), part.advantages, part.completion_mask,
                            epsilon=cfg.algo.epsilon, beta=cfg.algo.beta, agg=cfg.algo.loss_agg,
                            ref_logprobs=None if ref_logprobs is None else ref_logprobs[chunk].to(logprobs.device))
                        acc.backward(loss * weight)
                    loss_sum += loss.item() * weight
                    stats.append(st)
                    mismatch.append(part.logprob_gap(logprobs.detach()))
                grad_norm = float("nan")
                if len(chunks):  # a batch without any learning signal makes no update
                    if cfg.train.max_grad_norm > 0:
                        grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm))
                    run.optimizer.step()
                    run.optimizer.zero_grad(set_to_none=True)
            with timer("weight_sync"):  # the engine samples the next step from the new weights
                run.engine.update_weights(model)
                run.scheduler.step()

            # ---------------- 7. metrics, samples, eval, checkpoint
            run.state.step = step
            metrics = {
                **scored.metrics(), "loss": loss_sum, "grad_norm": grad_norm,
                "lr": run.scheduler.get_last_lr()[0], **_mean_stats(stats),
                "update/rows_fraction": len(rows_to_update) / len(batch),
                "groups/zero_variance_fraction": zero_variance_groups(rewards, G).float().mean().item(),
                **batch.length_metrics(), **{f"engine/{k}": v for k, v in _merge_gaps(mismatch).items()},
                **timer.pop(), "time/step": time.perf_counter() - step_start,
            }
            metrics |= maybe_eval(run, step)
            log_step(run, step, metrics, rows, completions, scored, advantages)
            maybe_checkpoint(run, step)
            bar.update(task, completed=step, info=run.bar_info(metrics))
    return finish_run(run)


def _rows_with_gradient(batch, cfg: Config, num_processes: int) -> torch.Tensor:
    """Indices of the completions whose loss has a gradient.

    With no KL term, a completion with zero advantage (every member of a zero-variance group) adds
    exactly zero gradient, so its forward/backward is skipped; the normaliser still counts it
    (RolloutBatch.weight), so the update equals the full batch's. Under DDP every rank must run
    the same number of backward passes, so nothing is skipped there.
    """
    if cfg.algo.beta > 0 or num_processes > 1:
        return torch.arange(len(batch))
    return torch.nonzero(batch.advantages != 0).squeeze(-1)


def _mean_stats(stats: list) -> dict:
    if not stats:
        return {"kl": float("nan"), "clip_fraction": float("nan")}
    return {"kl": sum(s.kl for s in stats) / len(stats), "clip_fraction": sum(s.clip_fraction for s in stats) / len(stats)}


def _merge_gaps(parts: list[dict]) -> dict:
    """Combine per-micro-batch |engine - trainer| logprob gaps into batch mean and max."""
    tokens = sum(p["tokens"] for p in parts)
    return {"logprob_gap_mean": sum(p["sum"] for p in parts) / tokens if tokens else float("nan"),
            "logprob_gap_max": max(p["max"] for p in parts) if parts else float("nan")}
