"""A generation worker: a separate process with its own copy of the policy, sampling with the HF engine.

The trainer keeps training while the worker generates (r1kit.producer decides what to ask for). Weights
travel through shared memory: ``slots`` is a ring of copies of the trainable parameters (all weights, or a
LoRA model's adapters only) in shared memory, each stamped with the policy version it holds (version =
trainer steps applied). The trainer copies its weights into the slot
of the new version (``publish``: the copy and nothing else); the worker copies a slot into its own
model before each batch. A stamp of -1 means "being written"; a reader that sees the stamp change during
its copy retries (a seqlock), so a torn copy is never used.

Requests name the batch, its prompts, the sampling parameters and the version rule: exactly version v
(fixed lag: nothing else decides what the batch is sampled from) or the newest version >= v (bounded
staleness). Every completion comes back tagged with the version that produced it.

Faults: every wait has a timeout. The trainer polls the result queue in short slices and checks that
the worker is alive, so a worker that dies stops the trainer within about a second, one that hangs
within ``timeout_s``, each with one line naming the worker. The worker is a daemon process (ended
when the trainer exits normally) and watches its parent: a trainer killed with SIGKILL leaves no orphan.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import queue
import threading
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from r1kit.rollout.weights import unwrap
from r1kit.types import Completion, SamplingParams

WRITING = -1  # a slot's stamp while the trainer copies into it (and before its first version)
POLL_S = 0.5  # how often a waiting trainer checks that the worker is alive
START_S = 300.0  # the least time a worker gets to start (import torch, unpickle the policy): minutes on a busy CPU


def get_within(answers: queue.Queue, timeout_s: float, check, timed_out):
    """The next item of `answers`. Every POLL_S without one, `check()` runs (it raises if the producer of the
    answers died or failed); past timeout_s, the exception `timed_out()` returns is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return answers.get(timeout=POLL_S)
        except queue.Empty:
            check()
            if time.monotonic() > deadline:
                raise timed_out() from None


class WorkerError(RuntimeError):
    """The generation worker died, hung, or failed; the message names it and says what happened."""


@dataclass(frozen=True)
class Request:
    batch: int  # which batch (the trainer's step in fixed-lag mode)
    prompts: list[list[int]]  # token ids of this batch's prompts (this process's share)
    n: int  # completions per prompt
    sampling: SamplingParams
    version: int  # the policy version to sample from: exactly (exact) or at least this one
    exact: bool


@dataclass(frozen=True)
class Placement:
    """Where the worker runs: the CPU cores it may use (empty: any) and its torch thread count (0: one per core)."""

    cores: tuple[int, ...] = ()
    threads: int = 0


def pin(cores: tuple[int, ...], threads: int) -> tuple[set[int], int]:
    """Pin every thread of this process to `cores` and set torch's thread count; returns what was there before."""
    before = (os.sched_getaffinity(0), torch.get_num_threads())
    if cores:
        for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
            os.sched_setaffinity(int(tid), set(cores))
    if threads or cores:
        torch.set_num_threads(threads or len(cores))
    return before


def trained_tensors(model) -> dict[str, torch.Tensor]:
    """What an optimizer step changes: the trainable parameters (all of them, or a LoRA model's adapters),
    by name, each once (a tied head is one parameter). Buffers and frozen weights never change."""
    return {name: p.detach() for name, p in unwrap(model).named_parameters() if p.requires_grad}


def generator_copy(model) -> torch.nn.Module:
    """A copy of the policy for the worker: the same class (a LoRA model keeps its adapters), config, dtype,
    generation config and buffers, so it samples exactly what the policy would with the same weights."""
    clone = copy.deepcopy(unwrap(model))
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _load_slot(model, slot: dict, stamps: torch.Tensor, index: int, want: int, exact: bool) -> int:
    """Copy slot `index` into `model` if it holds the wanted version; returns the version, or None to retry."""
    version = int(stamps[index])
    if version == WRITING or (version != want if exact else version < want):
        return None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in slot.items():
            params[name].copy_(tensor)
    return version if int(stamps[index]) == version else None  # changed while copying: torn, retry


def load_version(model, slots: list[dict], stamps: torch.Tensor, want: int, exact: bool, timeout_s: float) -> int:
    """Put version `want` (exact) or the newest version >= want into `model`; returns the version loaded."""
    deadline = time.monotonic() + timeout_s
    while True:
        order = sorted(range(len(slots)), key=lambda i: -int(stamps[i]))  # newest first
        for index in order:
            version = _load_slot(model, slots[index], stamps, index, want, exact)
            if version is not None:
                return version
        if time.monotonic() > deadline:
            rule = "exactly" if exact else "at least"
            raise WorkerError(f"generation worker: no weights of version {rule} {want} arrived within {timeout_s:.0f} s "
                              f"(slots hold versions {stamps.tolist()})")
        time.sleep(0.001)


def _watch_parent(parent_pid: int) -> None:
    """End this process when the trainer is gone (a SIGKILL'd parent runs no clean-up of its own)."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker_main(model, tokenizer, engine_kwargs: dict, placement: Placement, slots: list[dict], stamps: torch.Tensor,
                 requests, results, parent_pid: int, timeout_s: float) -> None:
    from r1kit.models import bound_cpu_kernel_caches
    from r1kit.rollout.hf import HFEngine

    _watch_parent(parent_pid)
    bound_cpu_kernel_caches()
    pin(placement.cores, placement.threads)
    engine = HFEngine(model, tokenizer, **engine_kwargs)
    results.put(("ready", os.getpid()))
    while True:
        request = requests.get()
        if request is None:
            return
        try:
            # half the trainer's limit: the worker's own, more precise error arrives before the trainer gives up
            version = load_version(model, slots, stamps, request.version, request.exact, timeout_s / 2)
            completions = engine.generate(request.prompts, request.n, request.sampling)
            results.put(("done", request.batch, version,
                         [dataclasses.replace(c, policy_version=version) for c in completions]))
        except Exception as e:  # reported to the trainer, which stops with it
            results.put(("error", request.batch, f"{type(e).__name__}: {e}"))
            return


class GenerationWorker:
    """The trainer's handle on one worker process: publish weights, submit requests, wait for batches."""

    def __init__(self, model, tokenizer, engine_kwargs: dict, placement: Placement, num_slots: int,
                 timeout_s: float, name: str = "generation worker"):
        self.timeout_s, self.name = timeout_s, name
        state = trained_tensors(model)
        # each slot its own storage, in shared memory, stamped "nothing yet"
        self.slots = [{k: t.detach().to("cpu", copy=True).share_memory_() for k, t in state.items()}
                      for _ in range(num_slots)]
        self.stamps = torch.full((num_slots,), WRITING, dtype=torch.int64).share_memory_()
        ctx = mp.get_context("spawn")
        self.requests, self.results = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(
            target=_worker_main, name=name, daemon=True,
            args=(generator_copy(model), tokenizer, engine_kwargs, placement, self.slots, self.stamps,
                  self.requests, self.results, os.getpid(), timeout_s))
        self.process.start()
        self.name = f"{name} (pid {self.process.pid})"
        self._expect("ready", "start", max(timeout_s, START_S))

    def publish(self, model, version: int) -> None:
        """Copy `model`'s weights into the slot of `version` (the slot of version - num_slots, no longer needed)."""
        index = version % len(self.slots)
        slot = self.slots[index]
        self.stamps[index] = WRITING
        with torch.no_grad():
            for name, tensor in trained_tensors(model).items():
                slot[name].copy_(tensor)
        self.stamps[index] = version

    def submit(self, request: Request) -> None:
        self._check_alive("receive a request")
        self.requests.put(request)

    def receive(self, what: str) -> tuple[int, int, list[Completion]]:
        """The next finished batch: (batch, version, completions); raises WorkerError on a fault."""
        message = self._expect("done", what)
        return message[1], message[2], message[3]

    def _expect(self, kind: str, what: str, timeout_s: float | None = None):
        timeout_s = timeout_s or self.timeout_s

        def timed_out() -> Exception:
            self.close()
            return WorkerError(f"{self.name} gave no {what} within {timeout_s:.0f} s "
                               "(rollout.asynchronous.timeout_s); it was stopped")

        message = get_within(self.results, timeout_s, lambda: self._check_alive(what), timed_out)
        if message[0] == "error":
            raise WorkerError(f"{self.name} failed on batch {message[1]}: {message[2]}")
        if message[0] != kind:
            raise WorkerError(f"{self.name} sent {message[0]!r} while {what} was awaited")
        return message

    def _check_alive(self, what: str) -> None:
        if not self.process.is_alive():
            raise WorkerError(f"{self.name} died (exit code {self.process.exitcode}) before the {what}")

    def close(self) -> None:
        """Stop the worker: ask it, then terminate it after a grace period; never waits without a limit."""
        if self.process.is_alive():
            try:
                self.requests.put(None)
            except (OSError, ValueError):  # the queue is already closed
                pass
            self.process.join(timeout=2.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5.0)
        for q in (self.requests, self.results):  # release their semaphores and feeder threads
            q.close()
            q.cancel_join_thread()
