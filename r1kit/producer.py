"""Where a step's completions come from: sampled now (synchronous), or ahead of the trainer (a worker or the server).

The loop asks `batches.next(step)` for step t's (rows, completions, scored, sampling metrics) and calls
`batches.publish(model, step)` after its update; which source is behind it (rollout.asynchronous.mode)
changes when the completions were sampled, not the story. A policy version is the number of trainer
steps applied to the weights; step t itself trains version t-1.

- sync: step t's prompts are generated at step t from version t-1, in the training process (today's loop).
- fixed_lag (k): step t trains on completions sampled from version max(0, t-1-k), always. The batch of step
  t+k is requested when version t-1 is published, so it is generated while step t trains; the worker is
  told the exact version, so nothing but k decides what a batch is sampled from (two runs are bitwise
  equal, and k = 0 is bitwise the synchronous run). Prompts and sampling seeds are the synchronous run's.
- bounded (max_staleness m): the worker runs up to m batches ahead and samples each with the newest weights
  it has when it starts it (at least the trainer's version when it was requested); a batch more than m
  versions older than the trainer when it is consumed (possible after a resume with a smaller m) is
  dropped, counted in async/dropped_batches, and the next batch is used.

Rewards are computed in the trainer when a batch is consumed, with the trainer's state, as in the
synchronous loop. What is in flight (generated or requested, not yet trained) is drained into the
checkpoint, so a resumed run trains exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses

import torch

from r1kit import distributed as dist
from r1kit.algo.advantages import zero_variance_groups
from r1kit.algo.filters import informative_groups
from r1kit.config import AlgoCfg
from r1kit.logging import PhaseTimer
from r1kit.rewards import RewardState, combine, reward_inputs
from r1kit.rewards.registry import RewardResult
from r1kit.rollout.remote_worker import ServerGenerator
from r1kit.rollout.worker import GenerationWorker, Placement, Request, pin
from r1kit.run import Run, sampling_params, step_prompt_indices
from r1kit.types import Completion


def make_batches(run: Run, algo: AlgoCfg, timer: PhaseTimer):
    """The batch source rollout.asynchronous.mode names; a context manager that releases its worker."""
    if run.cfg.rollout.asynchronous.mode == "sync":
        return SyncBatches(run, algo, timer)
    return AsyncBatches(run, timer)


class SyncBatches:
    """Today's loop: step t's completions are sampled at step t by the run's engine (sample_and_score)."""

    def __init__(self, run: Run, algo: AlgoCfg, timer: PhaseTimer):
        self.run, self.algo, self.timer = run, algo, timer

    def next(self, step: int):
        rows, completions, scored, sampling = sample_and_score(self.run, self.algo, step, self.timer)
        return rows, [dataclasses.replace(c, policy_version=step - 1) for c in completions], scored, sampling

    def publish(self, model, step: int) -> None:
        self.run.engine.update_weights(model)

    def in_flight(self) -> dict:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncBatches(SyncBatches):
    """Batches generated ahead of the trainer: by a generation worker process (r1kit.rollout.worker, the HF
    engine), or by the vLLM server with a thread here pushing weights and waiting (r1kit.rollout.remote_worker)."""

    def __init__(self, run: Run, timer: PhaseTimer):
        cfg, acc = run.cfg, run.accelerator
        a = cfg.rollout.asynchronous
        self.run, self.timer = run, timer
        self.fixed = a.mode == "fixed_lag"
        self.ahead = a.lag if self.fixed else a.max_staleness
        self.share = dist.local_share(cfg.prompts_per_step, acc)
        self.start_version = run.state.step
        saved = run.state.in_flight or {}
        self.next_batch = saved.get("next_batch", run.state.step + 1)  # the batch the trainer consumes next
        mine = saved["ranks"][acc.process_index] if saved else {}  # each rank generated its own share
        self.ready = {b: (entry["version"], [Completion(**c) for c in entry["completions"]])
                      for b, entry in mine.items()}
        run.state.in_flight = {}
        self.next_request = max(self.ready, default=self.next_batch - 1) + 1
        self.dropped = 0
        self.trainer_before = pin(tuple(a.trainer_cores), 0)
        self.remote = cfg.rollout.engine == "server"
        try:
            if self.remote:  # the server samples; a thread here pushes and waits (r1kit.rollout.remote_worker)
                self.worker = ServerGenerator(run.engine, self.start_version, timeout_s=a.timeout_s)
                # evaluation samples through the thread's queue, from the trainer's newest version
                self.server_engine, run.engine = run.engine, self.worker.engine_view()
            else:
                self.worker = GenerationWorker(
                    run.model, run.tokenizer, {"generation_batch_size": cfg.rollout.generation_batch_size,
                                               "autocast": cfg.rollout.autocast},
                    Placement(tuple(a.generator_cores), a.generator_threads),
                    num_slots=self.ahead + 1 if self.fixed else 2, timeout_s=a.timeout_s)
        except BaseException:
            self._restore_placement()
            raise
        self.worker.publish(run.model, self.start_version)

    # ------------------------------------------------ the loop's three calls

    def next(self, step: int):
        latest = step - 1  # the version the trainer holds
        while True:
            self._request(step)
            with self.timer("generate_wait"):
                batch, (version, completions) = self.next_batch, self._take(self.next_batch)
            self.next_batch += 1
            if self.fixed or not dist.all_max(self.run.accelerator, int(latest - version > self.ahead)):
                break  # every rank keeps the batch (or every rank drops it: they stay on the same batch)
            self.dropped += 1  # older than max_staleness: never trained on
        rows = self._rows(batch)
        with self.timer("reward"):
            scored = _score(self.run, rows, completions)
        staleness = [latest - c.policy_version for c in completions]
        metrics = {**sampling_metrics([scored], len(rows), self.run.cfg.rollout.num_generations),
                   "async/staleness_mean": sum(staleness) / len(staleness), "async/staleness_max": float(max(staleness)),
                   "async/dropped_batches": float(self.dropped), "async/batch": float(batch)}
        self.dropped = 0
        return rows, completions, scored, metrics

    def publish(self, model, step: int) -> None:
        self.worker.publish(model, step)  # version `step`: a copy (shared memory, or a snapshot), nothing more
        if not self.remote:
            self.run.engine.update_weights(model)  # the trainer's own engine (evaluation)

    def in_flight(self) -> dict:
        """Every requested batch, finished (waiting for the worker), with its version: the checkpoint's share."""
        for batch in range(self.next_batch, self.next_request):
            self._receive_until(batch)
        batches = {b: {"version": v, "completions": [dataclasses.asdict(c) for c in cs]}
                   for b, (v, cs) in sorted(self.ready.items())}
        return {"next_batch": self.next_batch, "ranks": dist.gather_lists(self.run.accelerator, [batches])}

    def close(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()
        if getattr(self, "server_engine", None) is not None:
            self.run.engine, self.server_engine = self.server_engine, None
        self._restore_placement()

    def __exit__(self, exc_type, *exc):
        try:
            if exc_type is None and self.remote:  # the final evaluation samples from the server: the newest weights
                self.worker.settle()
        finally:
            self.close()

    # ------------------------------------------------ requests and arrivals

    def _request(self, step: int) -> None:
        """Ask for every batch the trainer may need next, up to `ahead` beyond the one it consumes now."""
        cfg = self.run.cfg
        last = self.next_batch + min(self.ahead, cfg.train.max_steps - step)
        while self.next_request <= last:
            b = self.next_request
            rows = self._rows(b)
            self.worker.submit(Request(
                batch=b, prompts=[r["prompt_ids"] for r in rows], n=cfg.rollout.num_generations,
                sampling=sampling_params(cfg, b, prompt_offset=self.share.start),
                version=max(b - 1 - self.ahead, self.start_version) if self.fixed else step - 1, exact=self.fixed))
            self.next_request += 1

    def _take(self, batch: int) -> tuple[int, list[Completion]]:
        self._receive_until(batch)
        return self.ready.pop(batch)

    def _receive_until(self, batch: int) -> None:
        while batch not in self.ready:
            got, version, completions = self.worker.receive(f"batch {batch}")
            self.ready[got] = (version, completions)

    def _rows(self, batch: int) -> list[dict]:
        """This process's rows of `batch`: the prompts the synchronous run's step `batch` draws."""
        run = self.run
        indices = step_prompt_indices(run.cfg.seed, batch, run.cfg.prompts_per_step, len(run.train_rows))
        return [run.train_rows[indices[i]] for i in self.share]

    def _restore_placement(self) -> None:
        before = getattr(self, "trainer_before", None)
        if before is not None and self.run.cfg.rollout.asynchronous.trainer_cores:
            pin(tuple(before[0]), before[1])
        self.trainer_before = None


# ---------------------------------------------------------------- the synchronous source


def sample_and_score(run: Run, algo: AlgoCfg, step: int, timer: PhaseTimer):
    """This process's groups of G completions (its B/W prompts) with their rewards, and sampling metrics.

    Without dynamic sampling this is one draw. With it (DAPO), groups whose rewards do not vary
    (std <= algo.min_group_std, or 0) are set aside and fresh prompts are drawn again, up to
    algo.max_sampling_rounds extra draws; the step then trains on the informative groups found
    (possibly fewer; if none at all, the first draw, whose advantages are all zero). With several
    processes each fills its own share, and all draw until every one is full (generation may be
    collective), so dynamic sampling depends on the process count; one draw does not.
    Reward metrics cover every completion drawn.
    """
    cfg, acc = run.cfg, run.accelerator
    G = cfg.rollout.num_generations
    share = dist.local_share(cfg.prompts_per_step, acc)  # this process's prompts of every draw
    rows, completions, kept_scores, drawn_scores = [], [], [], []
    draws = 1 + (algo.max_sampling_rounds if algo.dynamic_sampling else 0)
    for draw in range(draws):
        indices = step_prompt_indices(cfg.seed, step, cfg.prompts_per_step, len(run.train_rows), draw)
        draw_rows = [run.train_rows[indices[i]] for i in share]
        with timer("generate"):
            draw_completions = run.engine.generate([r["prompt_ids"] for r in draw_rows], G,
                                                   sampling_params(cfg, step, draw, prompt_offset=share.start))
        with timer("reward"):
            scored = _score(run, draw_rows, draw_completions)
        drawn_scores.append(scored)
        if draw == 0:
            first_draw = (draw_rows, draw_completions, [scored])
        if algo.dynamic_sampling:
            useful = informative_groups(torch.tensor(scored.total), G, algo.min_group_std).tolist()
            groups = [g for g, ok in enumerate(useful) if ok][: len(share) - len(rows)]
        else:
            groups = list(range(len(share)))
        for g in groups:
            completions += [dataclasses.replace(c, prompt_index=len(rows)) for c in draw_completions[g * G:(g + 1) * G]]
            kept_scores.append(scored.select(range(g * G, (g + 1) * G)))
            rows.append(draw_rows[g])
        if dist.all_max(acc, len(share) - len(rows)) == 0:  # every process is full
            break
    informative = len(rows)
    if not rows:  # no draw had a group with signal: train on the first draw (zero advantages, as without DAPO)
        rows, completions, kept_scores = first_draw
    return rows, completions, RewardResult.concat(kept_scores), sampling_metrics(drawn_scores, informative, G)


def sampling_metrics(drawn: list[RewardResult], informative: int, G: int) -> dict:
    """Reward metrics over every completion drawn, the number of draws, and the groups kept."""
    everything = RewardResult.concat(drawn)
    return {**everything.metrics(), "sampling/draws": float(len(drawn)), "sampling/groups_kept": float(informative),
            "groups/zero_variance_fraction": zero_variance_groups(torch.tensor(everything.total), G).float().mean().item()}


def _score(run: Run, rows: list[dict], completions: list) -> RewardResult:
    """Every reward function on `completions`, given what TRL gives it (r1kit.rewards.contract)."""
    texts, columns = reward_inputs(rows, completions, run.cfg.data)
    return combine(run.reward_funcs, texts, columns, run.cfg.train.reward_on_error,
                   state=RewardState(run.state.step, run.cfg.train.max_steps))
