"""model.lora.sync without vLLM: the knob's validation, which adapters vLLM can serve, the adapter's files,
serve-gen's adapter route (with vLLM's engine and model list faked) and the remote engine's pushes (with the
server faked). vLLM itself serving the adapter: tests/test_vllm_lora.py."""

import asyncio
import json
import logging

import pytest
import torch

from r1kit.config import ConfigError, LoraCfg, ModelCfg
from r1kit.recipe import load_recipe
from r1kit.models import apply_lora, load_model, load_tokenizer, resolve_model_path
from r1kit.rollout import lora_sync
from r1kit.rollout.weights import export_state_dict

PLAIN = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "bias": "none",
         "init_lora_weights": True}


@pytest.mark.parametrize("overrides, message", [
    (["model.lora.sync=adapters"], "model.lora.sync"),  # a typo names the key
    (["model.lora.sync=adapter", "model.lora.enabled=true"], "rollout.engine vllm or server"),  # hf engine
    (["model.lora.sync=adapter", "rollout.engine=vllm"], "model.lora.enabled=true"),
])
def test_the_knob_is_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, overrides)


def test_the_knob_defaults_to_auto_and_takes_every_mode():
    assert load_recipe().model.lora.sync == "auto"
    for mode in lora_sync.MODES:
        cfg = load_recipe(None, [f"model.lora.sync={mode}", "model.lora.enabled=true", "rollout.engine=vllm"])
        assert cfg.model.lora.sync == mode


@pytest.mark.parametrize("change, reason", [
    ({}, None),
    ({"r": 512}, None),  # vLLM's largest max_lora_rank
    ({"init_lora_weights": "gaussian"}, None),  # sets the adapter only
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"use_dora": True}, "DoRA"),
    ({"bias": "lora_only"}, "biases"),
    ({"lora_bias": True}, "biases"),
    ({"init_lora_weights": "pissa"}, "changes the base weights"),
    ({"layer_replication": [[0, 2]]}, "layer_replication"),
    ({"r": 513}, "above vLLM's largest max_lora_rank 512"),
    ({"rank_pattern": {"q_proj": 1024}}, "rank 1024"),  # per-module ranks count too
    ({"target_modules": ["q_proj", "lm_head"]}, "['lm_head']"),
    ({"target_modules": ["model.embed_tokens"]}, "embedding/head"),
    ({"peft_type": "IA3"}, "not LoRA"),
])
def test_what_vllm_cannot_serve_is_named(change, reason):
    why = lora_sync.adapter_blockers({**PLAIN, **change})
    assert (why == []) if reason is None else (len(why) == 1 and reason in why[0]), why


def test_a_server_limits_the_rank_and_4bit_bases_merge():
    assert lora_sync.adapter_blockers(PLAIN, server_max_rank=16) == []
    assert "--max-lora-rank 8" in lora_sync.adapter_blockers(PLAIN, server_max_rank=8)[0]
    assert "4-bit" in lora_sync.adapter_blockers(PLAIN, load_in_4bit=True)[0]
    assert [lora_sync.engine_rank(r) for r in (1, 2, 8, 9, 16, 300, 512, 513)] == [1, 8, 8, 16, 16, 320, 512, None]


def test_resolve_serves_merges_with_a_notice_or_refuses(caplog):
    dora = {**PLAIN, "use_dora": True}
    with caplog.at_level(logging.WARNING, logger="r1kit.rollout.lora_sync"):
        assert lora_sync.resolve("auto", PLAIN, "engine X") == "adapter"
        assert not caplog.records
        assert lora_sync.resolve("merged", PLAIN, "engine X") == "merged"
        assert lora_sync.resolve("adapter", None, "engine X") == "merged"  # no LoRA: full weights, nothing to say
        assert not caplog.records
        assert lora_sync.resolve("auto", dora, "engine X") == "merged"
    [notice] = caplog.records
    assert "engine X syncs merged weights" in notice.getMessage() and "DoRA" in notice.getMessage()
    with pytest.raises(ConfigError, match="model.lora.sync=adapter: engine X cannot serve this adapter: DoRA"):
        lora_sync.resolve("adapter", dora, "engine X")
    with pytest.raises(ConfigError, match="--enable-lora --max-lora-rank 16"):
        lora_sync.resolve("adapter", PLAIN, "the server", server_lora=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="r1kit.rollout.lora_sync"):  # the engine's own reason
        assert lora_sync.resolve("auto", PLAIN, "engine X", engine_reasons=["sleep mode"]) == "merged"
    assert "sleep mode" in caplog.text


@pytest.fixture(scope="module")
def lora_policy():
    """The tiny model with r=8 adapters after one optimizer step, so lora_B is no longer zero."""
    path = resolve_model_path("builtin:tiny-sft")
    tok = load_tokenizer(path)
    model = apply_lora(load_model(ModelCfg(name_or_path=path), tok), LoraCfg(enabled=True, r=8))
    train_step(model, tok)
    return tok, model


def train_step(model, tok, lr=0.05):
    ids = torch.tensor([tok.encode("<answer>12</answer>")])
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model(input_ids=ids, labels=ids).loss.backward()
    optim.step()
    optim.zero_grad()


def test_the_adapter_is_peft_own_files_and_nothing_is_merged(lora_policy, tmp_path, monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file

    tok, model = lora_policy
    monkeypatch.setattr(model, "merge_adapter", lambda *a, **k: pytest.fail("the adapter path merged"))
    tensors, config = lora_sync.export_adapter(model)
    model.save_pretrained(tmp_path / "peft")  # peft's own save: the same names and values
    theirs = load_file(tmp_path / "peft" / lora_sync.ADAPTER_FILE)
    assert theirs.keys() == tensors.keys() and all(torch.equal(theirs[k], tensors[k]) for k in theirs)
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # the step moved them
    assert json.loads(config)["r"] == 8 and json.loads(config)["target_modules"] == ["k_proj", "o_proj", "q_proj",
                                                                                    "v_proj"]
    written = lora_sync.save_adapter(tensors, config, tmp_path / "ours")
    assert written == (tmp_path / "ours" / lora_sync.ADAPTER_FILE).stat().st_size + len(config)
    body = lora_sync.adapter_bytes(tensors, config)
    assert lora_sync.unpack_adapter(body, tmp_path / "unpacked") == len(tensors)
    # what the server writes is a PEFT adapter: peft loads it onto the base and gives the policy's logits
    base = load_model(ModelCfg(name_or_path=resolve_model_path("builtin:tiny-sft")), tok)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "unpacked")
    ids = torch.tensor([tok.encode("What is 2+3?")])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-6)
    assert lora_sync.adapter_blockers(lora_sync.adapter_config(model)) == []  # r1kit's own LoRA is servable


def test_base_weights_leave_the_adapter_out(lora_policy):
    tok, model = lora_policy
    merged, base = export_state_dict(model), export_state_dict(model, merge_lora=False)
    assert merged.keys() == base.keys() and not any("lora_" in k or "base_layer" in k for k in base)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the trained adapter is in the merged weights only
    norm = "model.norm.weight"
    assert torch.equal(merged[norm], base[norm])


def test_unpack_refuses_what_is_not_an_adapter(tmp_path):
    from safetensors.torch import save

    for body in (b"not safetensors", save({"x": torch.zeros(2)})):
        with pytest.raises(ValueError, match="not an adapter upload"):
            lora_sync.unpack_adapter(body, tmp_path / "a")


# ------------------------------------------------------------ serve-gen's route, vLLM faked


class FakeModels:
    """vLLM's OpenAIServingModels as AdapterLoader uses it."""

    def __init__(self, engine):
        self.engine, self.lora_requests, self.ids = engine, {}, 0

    async def load_lora_adapter(self, request):
        from vllm.lora.request import LoRARequest

        self.ids += 1
        lora = LoRARequest(request.lora_name, self.ids, request.lora_path)
        await self.engine.add_lora(lora)
        self.lora_requests[request.lora_name] = lora
        return "Success"

    async def unload_lora_adapter(self, request):
        del self.lora_requests[request.lora_name]
        return "Success"


class FakeEngine:
    def __init__(self, max_lora_rank=16):
        lora = type("LoRAConfig", (), {"max_lora_rank": max_lora_rank})() if max_lora_rank else None
        self.vllm_config = type("VllmConfig", (), {"lora_config": lora})()
        self.events = []

    async def add_lora(self, lora):
        self.events.append(("add", lora.lora_int_id))

    async def remove_lora(self, lora_id):
        self.events.append(("remove", lora_id))

    async def pause_generation(self, mode):
        self.events.append("pause")

    async def resume_generation(self):
        self.events.append("resume")


async def _one(body):
    yield body


@pytest.mark.vllm  # needs vLLM's request types, not an engine
def test_the_adapter_route_keeps_one_adapter(lora_policy, tmp_path):
    from r1kit.serve.adapters import AdapterError, AdapterLoader
    from r1kit.serve.generation import WeightUpdater

    engine = FakeEngine()
    models = FakeModels(engine)
    loader = AdapterLoader(engine, lambda: models, WeightUpdater(engine, str(tmp_path), None, 1 << 30), str(tmp_path),
                           "base", max_upload_bytes=1 << 30)
    body = lora_sync.adapter_bytes(*lora_sync.export_adapter(lora_policy[1]))
    first = asyncio.run(loader.load("policy-v1", _one(body), len(body)))
    assert first["adapter"] == "policy-v1" and (tmp_path / "adapters" / "policy-v1" / lora_sync.CONFIG_FILE).is_file()
    assert asyncio.run(loader.load("policy-v1", _one(body), len(body)))["repeated"]  # a retry: not loaded again
    asyncio.run(loader.load("policy-v2", _one(body), len(body)))
    assert engine.events == [("add", 1), ("add", 2), "pause", ("remove", 1), "resume"]
    assert list(models.lora_requests) == ["policy-v2"] and not (tmp_path / "adapters" / "policy-v1").exists()
    assert loader.info() == {"max_lora_rank": 16, "adapter": "policy-v2"}
    loader.max_upload_bytes = len(body) - 1
    for name, chunks, declared, status in (("../x", _one(body), None, 400), ("base", _one(body), None, 400),
                                           ("policy-v3", _one(body), len(body), 413),  # declared too big
                                           ("policy-v3", _one(body), None, 413)):  # too big as it arrives
        with pytest.raises(AdapterError) as err:
            asyncio.run(loader.load(name, chunks, declared))
        assert err.value.status == status
    loader.max_upload_bytes = 1 << 30
    with pytest.raises(ValueError, match="not an adapter upload"):
        asyncio.run(loader.load("policy-v3", _one(b"junk"), 4))
    assert not (tmp_path / "adapters" / "policy-v3").exists() and loader.info()["adapter"] == "policy-v2"
    no_lora = FakeEngine(max_lora_rank=None)
    plain = AdapterLoader(no_lora, lambda: models, WeightUpdater(no_lora, str(tmp_path), None, 1), str(tmp_path),
                          "base", 1 << 30)
    with pytest.raises(AdapterError, match="--enable-lora"):
        asyncio.run(plain.load("policy-v1", _one(body), len(body)))


# ------------------------------------------------------------ the remote engine's pushes, the server faked


class FakeServer:
    """ServiceClient of a serve-gen with LoRA: counts weight versions, records every body."""

    url, timeout_s = "http://gen", 5

    def __init__(self, max_lora_rank=16):
        self.version, self.adapter, self.max_lora_rank, self.posts = 0, None, max_lora_rank, []

    def get(self, path, timeout_s=None):
        return {"model": "tiny", "logprobs_mode": "processed_logprobs", "weights_version": self.version,
                "max_lora_rank": self.max_lora_rank, "adapter": self.adapter}

    def post(self, path, payload, timeout_s=None, retries=None):
        self.posts.append((path.split("?")[0], len(payload)))
        if path.startswith("/r1kit/load_lora_adapter"):
            self.adapter = path.split("name=")[1]
            return {"adapter": self.adapter}
        self.version += 1
        return {"weights_version": self.version}


def test_the_remote_engine_sends_the_base_once_then_adapters(lora_policy, monkeypatch):
    from r1kit.rollout.remote import RemoteEngine

    tok, model = lora_policy
    monkeypatch.setattr(model, "merge_adapter", lambda *a, **k: pytest.fail("the adapter path merged"))
    server = FakeServer()
    engine = RemoteEngine(server, "tiny", tok, policy=model)
    assert engine.lora_sync == "adapter"
    adapter = len(lora_sync.adapter_bytes(*lora_sync.export_adapter(model)))
    engine.update_weights(model)
    train_step(model, tok)
    engine.update_weights(model)
    assert [p for p, _ in server.posts] == ["/r1kit/update_weights", "/r1kit/load_lora_adapter",
                                           "/r1kit/load_lora_adapter"]
    base = server.posts[0][1]
    assert engine.sync_bytes == [base + adapter, adapter] and adapter * 10 < base
    assert engine.adapter_name == server.adapter and engine.adapter_name.endswith("-v2")
    server.version += 1  # a restart or another writer changed the weights: the base goes again
    engine.update_weights(model)
    assert [p for p, _ in server.posts[3:]] == ["/r1kit/update_weights", "/r1kit/load_lora_adapter"]


def test_a_server_without_lora_gets_merged_weights_with_a_notice(lora_policy, caplog):
    from r1kit.rollout.remote import RemoteEngine

    tok, model = lora_policy
    server = FakeServer(max_lora_rank=None)
    with caplog.at_level(logging.WARNING, logger="r1kit.rollout.lora_sync"):
        engine = RemoteEngine(server, "tiny", tok, policy=model)
    assert engine.lora_sync == "merged" and "--enable-lora --max-lora-rank 8" in caplog.text
    engine.update_weights(model)
    assert [p for p, _ in server.posts] == ["/r1kit/update_weights"] and engine.adapter_name is None
    with pytest.raises(ConfigError, match="started without LoRA"):
        RemoteEngine(server, "tiny", tok, policy=model, lora_sync_mode="adapter")


def test_processes_that_do_not_push_ask_the_server_for_the_adapter_name(lora_policy):
    from r1kit.rollout.remote import RemoteEngine

    tok, model = lora_policy
    server = FakeServer()
    main = RemoteEngine(server, "tiny", tok, policy=model)
    other = RemoteEngine(server, "tiny", tok, policy=model, pushes=False)
    main.update_weights(model)
    other.update_weights(model)  # after the barrier, in a real run
    assert other.adapter_name == main.adapter_name and other.sync_bytes == [0]
    assert len(server.posts) == 2  # the main process's base and adapter only
