"""The server's generation thread (r1kit.rollout.remote_worker) with a fake engine: which version it pushes before
which batch, that a fixed lag samples from exactly the version asked for, that bounded staleness takes the newest,
that evaluation sees the trainer's newest weights, and that every fault reaches the trainer within its timeout.
The same class against a real `r1kit serve-gen` is tested in tests/test_vllm_async.py."""

import threading
import time

import pytest
import torch

from r1kit.rollout.http import ServiceError
from r1kit.rollout.remote_worker import ServerGenerator
from r1kit.rollout.weights import LOCAL
from r1kit.rollout.worker import Request, WorkerError
from r1kit.types import Completion, SamplingParams


class Policy(torch.nn.Module):
    """A model whose one weight is its version, so the engine can tell which weights it was given."""

    def __init__(self, version: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((2,), float(version)))


class FakeClient:
    url = "http://fake:1"


class FakeEngine:
    """RemoteEngine's interface: update_weights reads the version out of the pushed weights; generate answers
    with completions whose first token is the version it holds."""

    def __init__(self, push_s: float = 0.0, fail_on_push: int | None = None):
        self.client, self.barrier, self.gatherer = FakeClient(), "a barrier", "a gatherer"
        self.push_s, self.fail_on_push = push_s, fail_on_push
        self.held, self.pushed, self.generated = 0, [], []

    def update_weights(self, model) -> None:
        assert self.barrier is None and self.gatherer is LOCAL  # the thread never runs a collective
        version = int(model.state_dict()["w"][0])
        if version == self.fail_on_push:
            raise ServiceError(f"generation server at {self.client.url}/r1kit/update_weights did not answer")
        time.sleep(self.push_s)
        self.held = version
        self.pushed.append(version)

    def generate(self, prompts, n, sampling):
        self.generated.append(self.held)
        return [Completion(prompt_index=i, token_ids=[self.held], text="", finish_reason="length")
                for i in range(len(prompts)) for _ in range(n)]


def request(batch: int, version: int, exact: bool = True) -> Request:
    return Request(batch=batch, prompts=[[1, 2]], n=2, sampling=SamplingParams(4, seed=batch), version=version,
                   exact=exact)


def test_a_fixed_lag_batch_is_sampled_from_exactly_its_version_and_each_version_is_pushed_once():
    engine = FakeEngine()
    gen = ServerGenerator(engine, version=0, timeout_s=10)
    try:
        gen.publish(Policy(0), 0)
        # lag 1: batches 1 and 2 from version 0, batch b >= 3 from version b - 2, requested before they exist
        for b in (1, 2, 3, 4):
            gen.submit(request(b, max(0, b - 2)))
        got = [gen.receive(f"batch {b}") for b in (1, 2)]
        assert [(b, v) for b, v, _ in got] == [(1, 0), (2, 0)]
        for version in (1, 2, 3):  # the trainer publishes while the thread waits for version 1
            gen.publish(Policy(version), version)
        got += [gen.receive(f"batch {b}") for b in (3, 4)]
        assert [(b, v) for b, v, _ in got] == [(1, 0), (2, 0), (3, 1), (4, 2)]
        assert all({c.policy_version for c in cs} == {v} and {c.token_ids[0] for c in cs} == {v} for _, v, cs in got)
        assert engine.pushed == [1, 2]  # version 0 was on the server already; 3 is not needed yet
        # evaluation samples from the newest version (3), after the batches queued before it
        assert {c.token_ids[0] for c in gen.engine_view().generate([[5]], 1, SamplingParams(2))} == {3}
        gen.settle()
        assert engine.pushed == [1, 2, 3] and gen.snapshots == {}  # pushed snapshots are not kept
    finally:
        gen.close()
    assert engine.barrier == "a barrier"  # the run's engine itself is unchanged (the thread has its own view)


def test_bounded_staleness_samples_from_the_newest_version_published():
    engine = FakeEngine()
    gen = ServerGenerator(engine, version=0, timeout_s=10)
    try:
        for version in (0, 1, 2):
            gen.publish(Policy(version), version)
        assert sorted(gen.snapshots) == [1, 2]  # version 0 is on the server already: no copy
        gen.submit(request(1, 1, exact=False))
        assert gen.receive("batch 1")[1] == 2 and engine.pushed == [2]  # 1 is skipped: 2 is newer
        gen.submit(request(2, 1, exact=False))
        assert gen.receive("batch 2")[1] == 2 and engine.pushed == [2]  # the server holds >= 1 already
    finally:
        gen.close()


def test_publish_returns_while_a_push_is_under_way():
    """The trainer's cost is the snapshot: a slow push of version 1 does not hold up publishing version 2."""
    engine = FakeEngine(push_s=1.5)
    gen = ServerGenerator(engine, version=0, timeout_s=10)
    try:
        gen.publish(Policy(1), 1)
        gen.submit(request(2, 1))
        time.sleep(0.2)  # the thread is inside the push of version 1
        start = time.monotonic()
        gen.publish(Policy(2), 2)
        assert time.monotonic() - start < 0.5
        assert gen.receive("batch 2")[1] == 1
    finally:
        gen.close()


def test_a_server_that_fails_a_push_stops_the_trainer_with_one_line_naming_it():
    engine = FakeEngine(fail_on_push=1)
    gen = ServerGenerator(engine, version=0, timeout_s=10)
    try:
        gen.publish(Policy(1), 1)
        gen.submit(request(2, 1))
        start = time.monotonic()
        with pytest.raises(ServiceError) as err:
            gen.receive("batch 2")
        assert time.monotonic() - start < 2
        message = str(err.value)
        assert message.startswith("asynchronous generation stopped on batch 2 before the batch 2: generation server at "
                                  "http://fake:1/r1kit/update_weights did not answer"), message
        assert "\n" not in message
        with pytest.raises(ServiceError, match="stopped on batch 2"):  # every later call raises it too
            gen.publish(Policy(2), 2)
    finally:
        gen.close()


def test_every_wait_has_a_limit():
    # a version that is never published: the thread's own error names it within the limit
    gen = ServerGenerator(FakeEngine(), version=0, timeout_s=1.0)
    try:
        gen.submit(request(1, 5))
        with pytest.raises(WorkerError, match=r"no weights of version exactly 5 were published within 1 s "
                                              r"\(the server holds 0, newest published 0\)"):
            gen.receive("batch 1")
    finally:
        gen.close()
    # a server that never answers: the trainer stops at rollout.asynchronous.timeout_s
    engine = FakeEngine()
    hang = threading.Event()
    engine.generate = lambda *a: hang.wait(30) and []
    gen = ServerGenerator(engine, version=0, timeout_s=1.0)
    try:
        gen.submit(request(1, 0))
        start = time.monotonic()
        with pytest.raises(ServiceError, match=r"generation server at http://fake:1 gave no batch 1 within 1 s"):
            gen.receive("batch 1")
        assert time.monotonic() - start < 1 + 1 + 1.5  # the limit, then at most a second's wait for the thread
    finally:
        hang.set()
        gen.close()


def test_a_version_older_than_the_one_pushed_is_refused_not_sampled_from_newer_weights():
    gen = ServerGenerator(FakeEngine(), version=3, timeout_s=5)
    try:
        gen.submit(request(1, 2))
        with pytest.raises(WorkerError, match="version 2 was asked for after version 3 was pushed"):
            gen.receive("batch 1")
    finally:
        gen.close()
