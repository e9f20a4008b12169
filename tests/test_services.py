"""Servers without vLLM: the reference server equals the in-process reference; the HTTP client retries,
times out and fails with clear messages; the services section validates; vLLM is imported only on request."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from r1kit.batch import make_batch
from r1kit.config import ConfigError
from r1kit.recipe import load_recipe
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.reference import LocalReference, RemoteReference
from r1kit.rollout.hf import HFEngine
from r1kit.rollout.http import ServiceClient, ServiceError
from r1kit.serve.reference import ReferenceService, make_server
from r1kit.types import SamplingParams

QUESTIONS = ["Ana has 3 pens, gets 4. How many pens now?", "Bo has 12 cups, loses 5, finds 1. How many cups now?"]


def serve_in_thread(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture()
def ref_server(small_model, tiny_tokenizer):
    service = ReferenceService(small_model, tiny_tokenizer.pad_token_id, "small", micro_batch_size=3)
    server = make_server(service, "127.0.0.1", 0, token="s3cret")
    yield serve_in_thread(server)
    server.shutdown()
    server.server_close()


def rollout_batch(model, tok, temperature):
    rows = [{"prompt_ids": encode_prompt(tok, build_messages(q))} for q in QUESTIONS]
    out = HFEngine(model, tok).generate([r["prompt_ids"] for r in rows], 4,
                                        SamplingParams(max_new_tokens=14, temperature=temperature, seed=2))
    return make_batch(out, rows, torch.zeros(len(out)), tok.pad_token_id)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reference_server_equals_local_reference(ref_server, small_model, tiny_tokenizer, temperature):
    batch = rollout_batch(small_model, tiny_tokenizer, temperature)
    # the server's micro-batch size: the packed forward lays rows out per micro-batch, and another
    # layout changes the floats' summation order (equal to ~1e-6, not bit for bit)
    local = LocalReference(small_model, temperature, micro_batch_size=3).logprobs(batch)
    remote = RemoteReference(ServiceClient("reference server", ref_server, token="s3cret", timeout_s=30),
                             "small", temperature).logprobs(batch)
    assert remote.shape == local.shape == batch.completion_ids.shape
    assert torch.equal(remote, local)  # same code, same weights, floats survive JSON exactly
    other_layout = LocalReference(small_model, temperature, micro_batch_size=5).logprobs(batch)
    torch.testing.assert_close(other_layout, local, atol=1e-5, rtol=0)
    assert (remote[batch.completion_mask == 0] == 0).all() and (remote[batch.completion_mask == 1] < 0).all()


def test_reference_server_refuses_wrong_token_model_and_ids(ref_server, small_model, tiny_tokenizer):
    batch = rollout_batch(small_model, tiny_tokenizer, 1.0)
    with pytest.raises(ServiceError, match=r"refused the request \(HTTP 401\)"):
        RemoteReference(ServiceClient("reference server", ref_server, token="wrong"), "small", 1.0).logprobs(batch)
    with pytest.raises(ServiceError, match="serves model 'small', not 'other'"):
        RemoteReference(ServiceClient("reference server", ref_server, token="s3cret"), "other", 1.0)
    client = ServiceClient("reference server", ref_server, token="s3cret")
    with pytest.raises(ServiceError, match=r"HTTP 400.*completion_ids\[0\] must be a non-empty list of token ids"):
        client.post("/v1/logprobs", {"prompt_ids": [[5]], "completion_ids": [[10_000]]})


def test_dead_url_retries_with_backoff_then_names_the_url():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ServiceClient("generation server", f"http://127.0.0.1:{port}", timeout_s=2, retries=2, backoff_s=0.2,
                           hint="Start it with `r1kit serve-gen MODEL`.")
    start = time.time()
    with pytest.raises(ServiceError) as err:
        client.get("/r1kit/info")
    elapsed = time.time() - start
    assert f"generation server at http://127.0.0.1:{port}/r1kit/info did not answer after 3 tries" in str(err.value)
    assert "r1kit serve-gen" in str(err.value)
    assert 0.2 + 0.4 <= elapsed < 5  # two backoffs (0.2 s, 0.4 s), no hang


class SlowThenOk(BaseHTTPRequestHandler):
    calls = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).calls += 1
        if type(self).calls == 1:
            time.sleep(1.5)  # longer than the client's timeout
        elif type(self).calls == 2:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_slow_and_failing_answers_are_retried():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowThenOk)
    server.daemon_threads = True
    url = serve_in_thread(server)
    try:
        client = ServiceClient("test server", url, timeout_s=0.5, retries=2, backoff_s=0.05)
        assert client.get("/x") == {"ok": True}  # timeout, then 503, then an answer
        assert SlowThenOk.calls == 3
        SlowThenOk.calls = 0
        with pytest.raises(ServiceError, match="did not answer after 2 tries.*HTTP 503"):
            ServiceClient("test server", url, timeout_s=0.5, retries=1, backoff_s=0.05).get("/x")
    finally:
        server.shutdown()
        server.server_close()


def test_trainer_uses_the_reference_server(small_model_dir, tmp_path):
    """algo.beta > 0 with services.reference_url: the KL comes from the server and equals the local run's."""
    from r1kit.serve.reference import load_service
    from r1kit.trainer import train

    server = make_server(load_service(small_model_dir, micro_batch_size=4), "127.0.0.1", 0)
    url = serve_in_thread(server)
    fast = [f"model.name_or_path={small_model_dir}", "train.batch_size=8", "rollout.num_generations=4",
            "train.micro_batch_size=4", "rollout.max_completion_length=10", "log.progress=false",
            "log.console_every=0", "rewards=[{name: reward_fixtures.length_reward}]", "train.learning_rate=1e-3",
            "eval.before=false", "eval.after=false", "train.max_steps=2", "algo.beta=0.1", "train.save_every=0"]
    try:
        train(load_recipe(None, [*fast, f"output_dir={tmp_path}", "name=local"]))
        train(load_recipe(None, [*fast, f"output_dir={tmp_path}", "name=remote", f"services.reference_url={url}"]))
    finally:
        server.shutdown()
        server.server_close()
    kl = {name: [json.loads(x)["kl"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
          for name in ("local", "remote")}
    assert kl["remote"] == pytest.approx(kl["local"], abs=1e-7) and kl["remote"][1] > 0


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=server"], "rollout.engine=server needs services.generation_url"),
    (["services.generation_url=http://x:8000"], "services.generation_url is set but rollout.engine='hf'"),
    (["services.reference_url=http://x:8001"], "services.reference_url is set but algo.beta is 0"),
    (["rollout.engine=server", "services.generation_url=x:8000"], "must start with http:// or https://"),
    (["rollout.engine=server", "services.generation_url=http://x", "services.weight_transfer=path"],
     "services.weight_transfer=path needs services.shared_dir"),
    (["rollout.engine=server", "services.generation_url=http://x", "services.transport_address=10.0.0.1"],
     "services.transport_address is set but services.weight_transfer is not collective"),
    (["rollout.engine=server", "services.generation_url=http://x", "services.weight_transfer=collective",
      "services.transport_address=10.0.0.1:http"], "services.transport_address must be 'host' or 'host:port'"),
    (["rollout.engine=server", "services.generation_url=http://x", "services.weight_transfer=nccl"],
     "services.weight_transfer: expected one of"),
    (["rollout.vllm.gpu_memory_utilization=1.5"], "rollout.vllm.gpu_memory_utilization must be in"),
    (["rollout.engine=sglang"], "rollout.engine: expected one of"),
])
def test_services_validation(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(None, overrides)


def test_missing_vllm_is_a_clear_error(monkeypatch, small_model, tiny_tokenizer):
    from r1kit.run import make_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    cfg = load_recipe(None, ["rollout.engine=vllm"])
    with pytest.raises(ImportError, match=r"rollout.engine=vllm needs vLLM.*pip install 'r1kit\[vllm\]'"):
        make_engine(cfg, small_model, tiny_tokenizer)


def test_server_engine_with_no_server_fails_fast(small_model, tiny_tokenizer):
    from r1kit.run import make_engine

    cfg = load_recipe(None, ["rollout.engine=server", "services.generation_url=http://127.0.0.1:9",
                             "services.retries=1", "services.backoff_s=0.05", "services.timeout_s=2"])
    with pytest.raises(ServiceError, match=r"generation server at http://127.0.0.1:9/r1kit/info did not answer"):
        make_engine(cfg, small_model, tiny_tokenizer)


def test_importing_r1kit_never_imports_vllm():
    import subprocess

    code = ("import sys, r1kit.run, r1kit.trainer, r1kit.cli, r1kit.reference, r1kit.rollout.remote, "
            "r1kit.serve.reference; print('vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_layout_recipes_load_and_differ_from_their_base_only_in_layout():
    from dataclasses import replace
    from pathlib import Path

    recipes = Path(__file__).parent.parent / "recipes"
    base = load_recipe(recipes / "tiny" / "grpo.yaml")
    colocated = load_recipe(recipes / "tiny" / "grpo-vllm.yaml")
    assert colocated.rollout.engine == "vllm"
    assert replace(colocated, name=base.name, rollout=replace(colocated.rollout, engine="hf", vllm=base.rollout.vllm)) == base
    served = load_recipe(recipes / "tiny" / "grpo-server.yaml")
    assert served.rollout.engine == "server" and served.services.reference_url and served.algo.beta > 0
    gsm = load_recipe(recipes / "gsm8k" / "qwen2.5-0.5b-grpo.yaml")
    for name in ("qwen2.5-0.5b-grpo-vllm.yaml", "qwen2.5-0.5b-grpo-nodes.yaml"):
        layout = load_recipe(recipes / "gsm8k" / name)
        assert replace(layout, name=gsm.name, rollout=gsm.rollout, services=gsm.services) == gsm, name
