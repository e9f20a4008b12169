"""Server mode end to end on loopback: `r1kit serve-gen` + the remote engine, including a server killed mid-run.

Marked `vllm` (needs vLLM, started as a subprocess); CI runs it in the vLLM step.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from r1kit.batch import completion_logprobs, make_batch
from r1kit.recipe import load_recipe
from r1kit.data.tasks import arith_split
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.models import load_model, load_tokenizer, resolve_model_path
from r1kit.rollout.http import ServiceClient, ServiceError
from r1kit.types import SamplingParams
from test_distributed import free_port

pytestmark = pytest.mark.vllm
TOLERANCE = 2e-5
TOKEN = "test-token"


def wait_until_up(proc: subprocess.Popen, url: str, route: str, log: Path, what: str, timeout: float,
                  token: str = TOKEN) -> None:
    """Poll `route` of the server `proc` started at `url` until it answers; its log's tail if it exits or
    does not come up within `timeout` s."""
    client = ServiceClient(what, url, token=token, timeout_s=5, retries=0)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log: {log.read_text()[-3000:]}")
        try:
            client.get(route)
            return
        except ServiceError:
            time.sleep(1)
    raise RuntimeError(f"{what} did not come up in {timeout} s; log: {log.read_text()[-3000:]}")


class GenServer:
    """`r1kit serve-gen` in its own process group (so stopping it stops vLLM's workers too)."""

    def __init__(self, model: str, port: int, log: Path, weights_root: Path | None = None, extra: tuple = ()):
        self.model, self.port, self.log, self.weights_root = model, port, log, weights_root
        self.extra = list(extra)  # further vLLM flags
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self, timeout: float = 300) -> "GenServer":
        env = {**os.environ, "R1KIT_SERVICE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r1kit.cli", "serve-gen", self.model, "--port", str(self.port), "--kv-cache-gb",
             "1", *(["--weights-root", str(self.weights_root)] if self.weights_root else []), "--", "--enforce-eager", "--dtype", "float32", "--max-model-len", "512",
             *self.extra],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_until_up(self.proc, self.url, "/r1kit/info", self.log, "serve-gen", timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started, by its id
            self.proc.wait(timeout=60)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = GenServer("builtin:tiny-sft", free_port(), tmp_path_factory.mktemp("serve") / "serve-gen.log",
                    weights_root=tmp_path_factory.getbasetemp()).start()  # the tests' shared_dirs lie under it
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tiny():
    from r1kit.config import ModelCfg

    path = resolve_model_path("builtin:tiny-sft")
    tok = load_tokenizer(path)
    return path, tok, load_model(ModelCfg(name_or_path=path), tok)


def remote_engine(server, tok, **kw):
    from r1kit.rollout.remote import RemoteEngine

    client = ServiceClient("generation server", server.url, token=TOKEN, timeout_s=60, retries=1, backoff_s=0.5)
    return RemoteEngine(client, "builtin:tiny-sft", tok, **kw)


def rows_for(tok):
    rows = [{"prompt_ids": encode_prompt(tok, build_messages(r["question"]))} for r in arith_split("heldout", 4)]
    rows.append({"prompt_ids": encode_prompt(tok, build_messages("Count the dots: " + "." * 150))})
    return rows


@pytest.mark.parametrize("transfer", ["http", "path", "collective"])
def test_remote_logprobs_equal_trainer_logprobs_after_pushes(server, tiny, tmp_path, transfer):
    path, tok, model = tiny
    model = type(model).from_pretrained(path)
    engine = remote_engine(server, tok, weight_transfer=transfer, shared_dir=str(tmp_path))
    rows = rows_for(tok)
    torch.manual_seed(3)
    gaps = []
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        engine.update_weights(model)
        out = engine.generate([r["prompt_ids"] for r in rows], 4, SamplingParams(max_new_tokens=40, seed=step))
        assert [c.prompt_index for c in out] == [i for i in range(len(rows)) for _ in range(4)]
        batch = make_batch(out, rows, torch.zeros(len(out)), tok.pad_token_id)
        with torch.no_grad():
            trainer = completion_logprobs(model, batch, 1.0)
        gaps.append((trainer - batch.engine_logprobs)[batch.completion_mask.bool()].abs().max().item())
    assert max(gaps) <= TOLERANCE, gaps
    if transfer == "http":  # a full GRPO batch (8 x 16), seeded: reproducible through the server too
        prompts = [encode_prompt(tok, build_messages(r["question"])) for r in arith_split("train", 8)]
        a, b = (engine.generate(prompts, 16, SamplingParams(max_new_tokens=64, seed=5)) for _ in range(2))
        assert len(a) == 128 and [c.token_ids for c in a] == [c.token_ids for c in b]
    engine.update_weights(tiny[2])  # leave the server on the start model for the other tests


def test_collective_server_killed_mid_broadcast_fails_in_time_then_the_group_reforms(tmp_path, tiny):
    """The server dies between two buckets: one line naming it, within the timeout; restarted, the next update
    forms a new group by itself and the server samples from the trainer's weights again."""
    from r1kit.rollout.remote import RemoteEngine

    path, tok, start_model = tiny
    srv = GenServer("builtin:tiny-sft", free_port(), tmp_path / "serve-gen.log").start()
    try:
        client = ServiceClient("generation server", srv.url, token=TOKEN, timeout_s=30, retries=0)
        engine = RemoteEngine(client, "builtin:tiny-sft", tok, weight_transfer="collective", bucket_mb=0.05)
        engine.update_weights(start_model)
        first_group = engine.sender.group.group_id
        send = engine.sender.send

        def send_then_die(bucket, part, parts):
            if part == 2:
                srv.stop()
            send(bucket, part, parts)

        engine.sender.send = send_then_die
        began = time.time()
        with pytest.raises(ServiceError) as err:
            engine.update_weights(start_model)
        assert time.time() - began < 30 + 15  # the timeout, not a hang
        message = str(err.value)
        assert message.startswith(f"generation server at {srv.url}") and "\n" not in message, message
        assert engine.sender.group is None

        srv.start()
        engine.sender.send = send
        model = type(start_model).from_pretrained(path)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        engine.update_weights(model)
        assert engine.sender.group.group_id != first_group
        rows = rows_for(tok)
        out = engine.generate([r["prompt_ids"] for r in rows], 2, SamplingParams(max_new_tokens=20, seed=1))
        batch = make_batch(out, rows, torch.zeros(len(out)), tok.pad_token_id)
        with torch.no_grad():
            trainer = completion_logprobs(model, batch, 1.0)
        assert (trainer - batch.engine_logprobs)[batch.completion_mask.bool()].abs().max().item() <= TOLERANCE
    finally:
        srv.stop()


def test_wrong_token_model_and_push_fail_clearly(server, tiny):
    from r1kit.rollout.remote import RemoteEngine

    path, tok, model = tiny
    with pytest.raises(ServiceError, match=rf"generation server at {server.url}/r1kit/info refused .*HTTP 401"):
        RemoteEngine(ServiceClient("generation server", server.url, token="nope"), "builtin:tiny-sft", tok)
    with pytest.raises(ServiceError, match=r"serves model 'builtin:tiny-sft', not 'Qwen/Qwen2.5-0.5B'"):
        RemoteEngine(ServiceClient("generation server", server.url, token=TOKEN), "Qwen/Qwen2.5-0.5B", tok)
    client = ServiceClient("generation server", server.url, token=TOKEN)
    for path in ("/nonexistent-for-the-server", "/etc"):  # missing or outside --weights-root: the same answer
        with pytest.raises(ServiceError, match=r"update_weights refused the request \(HTTP 400\).*under the server's "
                                               r"--weights-root"):
            client.post("/r1kit/update_weights", {"path": path})


@pytest.mark.parametrize("route", ["/invocations", "/tokenize", "/v1/models", "/r1kit/info"])
def test_routes_outside_v1_need_the_token_too(server, route):
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "builtin:tiny-sft", "prompt": "1+1=", "max_tokens": 2}).encode()
    method = "GET" if route in ("/v1/models", "/r1kit/info") else "POST"
    request = urllib.request.Request(server.url + route, data=None if method == "GET" else body, method=method,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 401
    with urllib.request.urlopen(server.url + "/health", timeout=30) as answer:  # /health stays open
        assert answer.status == 200


# ------------------------------------------------------------ kill the server mid-run, then resume

KILL = {"server": None, "at_call": None, "calls": 0}


def kill_server_reward(completions, **_):
    """A reward that stops the generation server on its N-th call (i.e. during step N), then scores length."""
    KILL["calls"] += 1
    if KILL["calls"] == KILL["at_call"]:
        KILL["server"].stop()
    return [float(len(c[0]["content"])) for c in completions]  # conversational: TRL's message form


def test_server_killed_mid_run_stops_clearly_then_resume_works(tmp_path):
    srv = GenServer("builtin:tiny-sft", free_port(), tmp_path / "serve-gen.log").start()
    KILL.update(server=srv, at_call=3, calls=0)
    overrides = [f"output_dir={tmp_path}", "name=remote", "rollout.engine=server",
                 f"services.generation_url={srv.url}", "services.retries=2", "services.backoff_s=0.5",
                 "services.timeout_s=30", "train.batch_size=8", "rollout.num_generations=4",
                 "train.micro_batch_size=8", "rollout.max_completion_length=16", "log.progress=false",
                 "log.console_every=0", "eval.before=false", "eval.after=false",
                 "rewards=[{name: test_vllm_server.kill_server_reward}]", "train.save_every=2", "train.max_steps=4"]
    from r1kit.trainer import train

    os.environ["R1KIT_SERVICE_TOKEN"] = TOKEN
    try:
        start = time.time()
        with pytest.raises(ServiceError) as err:
            train(load_recipe(None, overrides))  # step 3: the weight push after the update finds no server
        assert f"generation server at {srv.url}/r1kit/update_weights did not answer after 3 tries" in str(err.value)
        assert "r1kit serve-gen" in str(err.value)
        assert time.time() - start < 120  # bounded: retries with backoff, no hang
        ckpts = tmp_path / "remote" / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step-2"]  # the last checkpoint, intact
        assert (ckpts / "step-2" / "model.safetensors").is_file() and (ckpts / "step-2" / "trainer_state.pt").is_file()

        srv.start()  # the server is back (serving the start model): the resumed engine pushes step 2's weights
        KILL.update(at_call=None)
        summary = train(load_recipe(None, [*overrides, "train.resume_from=latest"]))
        assert summary["steps"] == 4
        steps = [json.loads(x)["step"] for x in (tmp_path / "remote" / "metrics.jsonl").read_text().splitlines()]
        assert steps[-2:] == [3, 4]
        last = json.loads((tmp_path / "remote" / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["engine/logprob_gap_max"] < 1e-4  # the server sampled from the trainer's weights
    finally:
        os.environ.pop("R1KIT_SERVICE_TOKEN", None)
        srv.stop()
