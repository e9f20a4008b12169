"""The lean decode step computes exactly what the model's forward computes, and steps aside where it cannot."""

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
from transformers.models.llama import modeling_llama

import r1kit.rollout.decode as decode_module
import r1kit.rollout.decode_step as decode_step
from r1kit.rollout.decode import decode
from r1kit.rollout.kv_cache import new_cache, with_cache

SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=40,
             max_position_embeddings=128, pad_token_id=0, eos_token_id=1)
MODELS = {
    "llama": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=4)),
    "llama-gqa": (LlamaForCausalLM, LlamaConfig, dict(num_key_value_heads=2)),
    "qwen2-bias": (Qwen2ForCausalLM, Qwen2Config, dict(num_key_value_heads=2)),  # q/k/v biases
    "mistral": (MistralForCausalLM, MistralConfig, dict(num_key_value_heads=2, sliding_window=None)),
    "qwen3-qk-norm": (Qwen3ForCausalLM, Qwen3Config, dict(num_key_value_heads=2, head_dim=24)),
}


def _model(name, dtype=torch.float32, seed=0):
    model_class, config_class, extra = MODELS[name]
    config = config_class(**SHAPE, **extra)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return model_class(config).to(dtype).eval()


def _decode(model, monkeypatch, lean: bool):
    """A sampled decode of 3 prompts x 3 rows; the steps the lean step took are counted."""
    taken = []
    if lean:
        real = decode_step.LeanDecodeStep.__call__
        base = model.get_base_model() if hasattr(model, "get_base_model") else model

        def counted(self, *args):  # this model's steps, not the probe's
            if self.embed is base.model.embed_tokens:
                taken.append(1)
            return real(self, *args)

        monkeypatch.setattr(decode_step.LeanDecodeStep, "__call__", counted)
    else:
        monkeypatch.setattr(decode_module, "decode_step_for", lambda model, cache: None)
    prompts = [[5, 9, 2, 7, 11], [3], [8, 8, 30]]
    with torch.inference_mode():
        out = decode(model, prompts, [0, 0, 0, 1, 1, 1, 2, 2, 2], list(range(100, 109)), 12, {1}, 0)
    monkeypatch.undo()
    return out, len(taken)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MODELS))
def test_lean_step_samples_what_the_forward_samples(name, dtype, monkeypatch):
    model = _model(name, dtype)
    lean, steps = _decode(model, monkeypatch, lean=True)
    plain, none = _decode(model, monkeypatch, lean=False)
    assert steps == 11 and none == 0  # every step after the prefill took the lean path, then none did
    assert torch.equal(lean.tokens, plain.tokens) and torch.equal(lean.lengths, plain.lengths)
    assert torch.equal(lean.logprobs, plain.logprobs)  # bitwise
    assert len(set(map(tuple, lean.tokens.tolist()))) > 1


def test_lora_models_step_through_their_adapters(monkeypatch):
    """A peft model decodes through its base model's layers, adapters included: the same samples as its forward."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("llama-gqa"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "gate_proj"],
                                                           init_lora_weights=False)).eval()  # adapters not zero
    lean, steps = _decode(model, monkeypatch, lean=True)
    plain, _ = _decode(model, monkeypatch, lean=False)
    with model.disable_adapter():
        without_adapters, _ = _decode(model, monkeypatch, lean=True)
    assert steps == 11
    assert torch.equal(lean.tokens, plain.tokens) and torch.equal(lean.logprobs, plain.logprobs)
    assert not torch.equal(lean.logprobs, without_adapters.logprobs)  # the adapters took part


def test_logits_and_cache_writes_are_bitwise_the_forwards():
    model = _model("llama-gqa", torch.bfloat16)
    caches, logits = [], []
    with torch.inference_mode():
        for lean in (False, True):
            cache = new_cache(model, 8)
            model(input_ids=torch.tensor([[4, 5, 6]] * 2), use_cache=True, **with_cache(model, cache))
            ids, position = torch.tensor([[7], [9]]), torch.tensor([[3]] * 2)
            mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
            if lean:
                logits.append(decode_step.decode_step_for(model, cache)(ids, mask, position, cache))
            else:
                logits.append(model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True,
                                    logits_to_keep=1, **with_cache(model, cache)).logits[:, -1].float())
            caches.append(cache)
    assert torch.equal(logits[0], logits[1])
    for a, b in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("changed", ["LlamaDecoderLayer", "LlamaAttention"])
def test_probe_refuses_a_forward_that_computes_something_else(changed, monkeypatch):
    """A transformers whose Llama layer or attention computes otherwise (here: an output scaled by 1.5) fails the
    probe, and the loop calls the model: the step never stands in for a forward it does not reproduce. (The
    modules it calls, such as the MLP and the norms, run their own forward in both paths.)"""
    model = _model("llama")
    cache = new_cache(model, 4)
    decode_step.reproduces_forward.cache_clear()
    assert decode_step.decode_step_for(model, cache) is not None
    module_class = getattr(modeling_llama, changed)
    real = module_class.forward

    def scaled(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        return (out[0] * 1.5, *out[1:]) if isinstance(out, tuple) else out * 1.5

    monkeypatch.setattr(module_class, "forward", scaled)
    decode_step.reproduces_forward.cache_clear()
    try:
        assert decode_step.decode_step_for(model, cache) is None
    finally:
        decode_step.reproduces_forward.cache_clear()


def test_models_it_does_not_know_call_their_forward(monkeypatch):
    model = _model("llama")
    cache = new_cache(model, 4)
    monkeypatch.setattr(model.config, "_attn_implementation", "eager")
    assert decode_step.decode_step_for(model, cache) is None
    monkeypatch.undo()
    model.train()  # the forward would then apply attention dropout
    assert decode_step.decode_step_for(model, cache) is None
    model.eval()
    monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")  # transformers' sdpa then attends grouped heads otherwise
    assert decode_step.decode_step_for(model, cache) is None
    monkeypatch.undo()
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *a: None)  # a hook the step would skip
    assert decode_step.decode_step_for(model, cache) is None
    handle.remove()
    calls = []
    handle = model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))  # as gradient checkpointing's
    _, steps = _decode(model, monkeypatch, lean=True)
    handle.remove()
    assert steps == 11 and len(calls) == 1 + 11  # the prefill's and each lean step's embedding ran its hook
    sliding = _model("mistral")
    sliding.config.sliding_window = 4  # a cache of sliding-window layers is not preallocated
    assert decode_step.decode_step_for(sliding, new_cache(sliding, 4)) is None
