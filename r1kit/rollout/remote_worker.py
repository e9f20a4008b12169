"""Asynchronous generation on a vLLM server (``rollout.engine: server``): a thread that pushes and generates.

The producer (r1kit.producer.AsyncBatches) talks to this class as it talks to the local
GenerationWorker: ``publish(model, version)``, ``submit(Request)``, ``receive(what) -> (batch, version,
completions)``, ``close()``. Generation runs in the server (``r1kit serve-gen``, on its own cores, GPUs
or node); in the trainer a background thread does the waiting:

- ``publish`` copies the weights the server loads (r1kit.rollout.weights.export_state_dict: LoRA merged,
  the head written) into a CPU snapshot on the training thread and returns: that copy is the trainer's
  whole cost. The thread pushes snapshots through the RemoteEngine's own transport (http, path or
  collective), so the trainer never waits for a push.
- Requests are served in the order they were submitted. Exactly version v (fixed lag): the thread pushes
  v first unless the server already holds it, so a batch is sampled from v and nothing else; at least v
  (bounded staleness): the newest snapshot is pushed if it is newer than what the server holds. Every
  completion is tagged with the version the server held while sampling it. Versions only grow along the
  queue (a batch needs version b-1-k, evaluation the newest), so a snapshot older than the one pushed is
  dropped: with fixed lag k at most k+1 snapshots wait in memory.
- Evaluation samples through the same queue (``engine_view``), from the trainer's newest version, so it
  never meets weights the thread is about to replace.

Faults: every wait has a timeout. An exception in the thread (a server that died: the client's
ServiceError after its retries, naming the server and URL) is raised by the trainer's next call; a
thread that gives nothing within ``timeout_s`` stops the run with one line naming the server.

One training process only: with several, every rank would have to wait for the server to hold the version
its batch needs and the main rank could not push the next one before every rank finished sampling, a
coordination across ranks that a background thread cannot do with the trainer's collectives
(r1kit.run._check_async refuses it). Sharded weights (ZeRO-3, FSDP2) would be gathered collectively,
which must stay on the training thread: the snapshot is taken there for that reason.
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import threading
import time

import torch

from r1kit.rollout.http import ServiceError
from r1kit.rollout.weights import LOCAL, export_state_dict
from r1kit.rollout.worker import POLL_S, Request, WorkerError, get_within
from r1kit.types import Completion, SamplingParams

EVAL = -1  # the batch number of an evaluation call (answered on its own queue, never by receive)


class Snapshot:
    """A CPU copy of the weights the server loads, shaped as export_buckets reads a model (state_dict)."""

    def __init__(self, model):
        copies: dict[int, torch.Tensor] = {}  # a tied head is copied once, as it is one tensor in the model
        self.state = {}
        with torch.no_grad():
            for name, t in export_state_dict(model).items():
                key = id(t)
                if key not in copies:
                    copies[key] = t.detach().to("cpu", copy=True)
                self.state[name] = copies[key]

    def state_dict(self, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        return self.state


class ServerGenerator:
    """The trainer's handle on generation by a server: publish weights, submit requests, wait for batches."""

    def __init__(self, engine, version: int, timeout_s: float):
        """engine: the run's RemoteEngine, which already holds `version` (make_engine pushed the policy's
        weights when it built it); from now on only the thread pushes or samples through it."""
        self.timeout_s = timeout_s
        self.url = engine.client.url
        self.name = f"generation server at {self.url}"
        # the thread's view of the engine: one process, so no barrier between ranks and no collective gathers
        # (the snapshot is already whole); the client and the collective transport's group are shared
        self.engine = copy.copy(engine)
        self.engine.barrier, self.engine.gatherer = None, LOCAL
        self.cond = threading.Condition()
        self.snapshots: dict[int, Snapshot] = {}  # published, not yet pushed (or the newest pushed)
        self.newest = version  # the newest version published
        self.held = version  # the version the server holds (the thread's last push)
        self.pushes: list[int] = []  # every version the thread pushed, in order (tests read it)
        self.stopping = False
        self.error: BaseException | None = None
        self.failed_on: int | None = None
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="r1kit-generation-server", daemon=True)
        self.thread.start()

    # ------------------------------------------------ the trainer's calls

    def publish(self, model, version: int) -> None:
        """Copy `model`'s weights as `version` (on the calling thread: a sharded model's gathers stay here)."""
        self._check("take weights")
        if version <= self.held:  # the server has it already (the start or resumed weights the engine pushed)
            return
        snapshot = Snapshot(model)
        with self.cond:
            self.snapshots[version] = snapshot
            self.newest = max(self.newest, version)
            self.cond.notify_all()

    def submit(self, request: Request) -> None:
        self._check("receive a request")
        self.jobs.put((request, self.results))

    def receive(self, what: str) -> tuple[int, int, list[Completion]]:
        """The next finished batch: (batch, version, completions); raises ServiceError or WorkerError on a fault."""
        return self._wait(self.results, what)

    def generate_now(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        """Completions from the newest published version, after every batch submitted before (evaluation)."""
        reply: queue.Queue = queue.Queue()
        self._check("evaluate")
        self.jobs.put((Request(batch=EVAL, prompts=prompts, n=n, sampling=sampling, version=self.newest, exact=True),
                       reply))
        return self._wait(reply, f"evaluation at version {self.newest}")[2]

    def engine_view(self) -> "QueuedEngine":
        return QueuedEngine(self)

    def settle(self) -> None:
        """Leave the server holding the newest published version (the run's final evaluation samples from it)."""
        self.generate_now([], 1, SamplingParams(max_new_tokens=1))

    def close(self) -> None:
        """Stop the thread after the job it is on; never waits without a limit (a push in progress ends at its
        own HTTP timeout, and the thread is a daemon)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.jobs.put(None)
        self.thread.join(timeout=POLL_S * 2)

    # ------------------------------------------------ waiting, with a limit

    def _wait(self, answers: queue.Queue, what: str):
        def timed_out() -> Exception:
            self.close()
            return ServiceError(f"{self.name} gave no {what} within {self.timeout_s:.0f} s "
                                "(rollout.asynchronous.timeout_s)")

        return get_within(answers, self.timeout_s, lambda: self._check(what), timed_out)

    def _check(self, what: str) -> None:
        """Raise the thread's error, if it had one, on the trainer's thread."""
        if self.error is not None:
            where = "an evaluation" if self.failed_on == EVAL else f"batch {self.failed_on}"
            message = f"asynchronous generation stopped on {where} before the {what}: {self.error}"
            if isinstance(self.error, ServiceError):  # its message names the server and URL already
                raise ServiceError(message) from self.error
            raise WorkerError(f"{message} ({type(self.error).__name__}; {self.name})") from self.error
        if not self.thread.is_alive():
            raise WorkerError(f"the thread generating on the {self.name} has stopped before the {what}")

    # ------------------------------------------------ the thread

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None or self.stopping:
                return
            request, answers = job
            try:
                version = self._hold(request.version, request.exact)
                completions = self.engine.generate(request.prompts, request.n, request.sampling) \
                    if request.prompts else []
                tagged = [dataclasses.replace(c, policy_version=version) for c in completions]
            except BaseException as e:  # raised on the trainer's thread by its next call (_check)
                self.failed_on, self.error = request.batch, e
                return
            answers.put((request.batch, version, tagged))

    def _hold(self, want: int, exact: bool) -> int:
        """Make the server hold version `want` (exact) or one >= want; returns the version it holds."""
        deadline = time.monotonic() + self.timeout_s
        with self.cond:
            while True:
                if self.stopping:
                    raise WorkerError("closed while waiting for weights")
                target = self._target(want, exact)
                if target is not None:
                    break
                if time.monotonic() > deadline:
                    rule = "exactly" if exact else "at least"
                    raise WorkerError(f"no weights of version {rule} {want} were published within "
                                      f"{self.timeout_s:.0f} s (the server holds {self.held}, newest published "
                                      f"{self.newest})")
                self.cond.wait(POLL_S)
            if target == self.held:
                return target
            snapshot = self.snapshots[target]
        self.engine.update_weights(snapshot)  # outside the lock: the trainer may publish meanwhile
        with self.cond:
            self.held = target
            self.pushes.append(target)
            for done in [v for v in self.snapshots if v <= target]:  # never pushed again: versions only grow
                del self.snapshots[done]
        return target

    def _target(self, want: int, exact: bool) -> int | None:
        """The version to serve `want` from, once it can be decided (called under the lock)."""
        if exact:
            if want == self.held or want in self.snapshots:
                return want
            if want < self.held:
                raise WorkerError(f"version {want} was asked for after version {self.held} was pushed: "
                                  "its snapshot is gone (versions must not decrease along the queue)")
            return None
        newest = max(self.snapshots, default=self.held)
        if max(newest, self.held) >= want:
            return max(newest, self.held)
        return None


class QueuedEngine:
    """The Engine interface over ServerGenerator, for evaluation while asynchronous generation runs: it samples
    through the thread's queue, from the newest published version. Weights reach the server by publish only."""

    def __init__(self, generator: ServerGenerator):
        self.generator = generator

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        return self.generator.generate_now(prompts, n, sampling)

    def update_weights(self, model) -> None:
        raise RuntimeError("with asynchronous generation on a server, weights reach it through publish")

    def close(self) -> None:
        pass
