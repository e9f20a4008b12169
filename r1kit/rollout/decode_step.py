"""One decode step of a Llama-family model with the interpreter's share cut: the same operations, fewer calls.

A decode step of a small model is bound by Python, not arithmetic: on the tiny world (bf16, one CPU
thread) a third of generation time is the interpreter and PyTorch's binding layer. The model's own
forward reaches the same few tensor operations per layer through ~15 module calls with their hook
checks, keyword packing, the attention-interface lookup, transformers' sdpa wrapper (an environment
lookup per call) and output dataclasses. `LeanDecodeStep` runs those operations, in the same order on
the model's own modules (each module's `forward` called directly: a quantized or packed layer's own
forward still runs), and turns the bool key mask into sdpa's additive one once per step rather than
once per layer, so the logits are bitwise those of `model(...)`: tiny bf16 generation 0.178 -> 0.147 s
per call (18%), on a quiet 2-core CPU, one thread.

It covers transformers' Llama, Qwen2, Mistral and Qwen3 causal LMs (SmolLM2, Qwen2.5, Qwen3, Mistral,
the tiny world) with sdpa attention over full-attention preallocated caches (r1kit.rollout.decode), one
new token per row, on a CPU or CUDA device. That the installed transformers still computes what this
module reproduces is checked once per model class, config, dtype and autocast state, on a one-layer
random copy, against the model's forward (`reproduces_forward`); where it does not, or for any other
model, the decode loop calls the model.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import torch
import torch.nn.functional as F

from r1kit.rollout.kv_cache import CACHE_KEY, decode_keys, preallocated, prefill

# (causal LM, its decoder stack) class names whose per-token math this step reproduces; Qwen3 normalises
# each head's query and key before the rotary embedding (q_norm, k_norm), the others are Llama's.
SUPPORTED = {("LlamaForCausalLM", "LlamaModel"), ("Qwen2ForCausalLM", "Qwen2Model"),
             ("MistralForCausalLM", "MistralModel"), ("Qwen3ForCausalLM", "Qwen3Model")}


def _shape_supported(model) -> bool:
    """One of the SUPPORTED class pairs from transformers itself, sdpa attention, every layer used, no hooks
    but the embedding's (the step calls the other modules' forward, past any hook registered around it)."""
    inner = getattr(model, "model", None)
    if inner is None or (type(model).__name__, type(inner).__name__) not in SUPPORTED:
        return False
    if not type(model).__module__.startswith("transformers.models."):
        return False  # remote code with a familiar class name
    hooks = (torch.nn.modules.module._global_forward_hooks, torch.nn.modules.module._global_forward_pre_hooks)
    hooked = {m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks}
    if any(hooks) or hooked - {inner.embed_tokens}:  # the embedding is called with its hooks (gradient
        return False  # checkpointing's enable_input_require_grads puts one there)
    config = model.config
    return (getattr(config, "_attn_implementation", None) == "sdpa"
            and len(inner.layers) == config.num_hidden_layers)


class _Layer:
    """One decoder layer's forwards and constants, looked up once per decode call rather than per token."""

    __slots__ = ("norm_in", "q", "k", "v", "q_norm", "k_norm", "head_dim", "groups", "scaling", "o", "norm_post",
                 "gate", "up", "act", "down")

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm_in, self.norm_post = layer.input_layernorm.forward, layer.post_attention_layernorm.forward
        self.q, self.k, self.v = attn.q_proj.forward, attn.k_proj.forward, attn.v_proj.forward
        self.o = attn.o_proj.forward
        self.q_norm = attn.q_norm.forward if hasattr(attn, "q_norm") else None  # Qwen3
        self.k_norm = attn.k_norm.forward if hasattr(attn, "k_norm") else None
        self.head_dim, self.groups, self.scaling = attn.head_dim, attn.num_key_value_groups, attn.scaling
        self.gate, self.up, self.down = mlp.gate_proj.forward, mlp.up_proj.forward, mlp.down_proj.forward
        self.act = getattr(mlp.act_fn, "forward", mlp.act_fn)


class LeanDecodeStep:
    """A model's decode step (module docstring), bound to its modules for one decode call: the forwards it calls
    are those the modules have when it is built (inside the engine's packed-weights context)."""

    def __init__(self, model):
        inner = model.model
        self.embed = inner.embed_tokens  # called with its hooks
        self.rotary_embedding = inner.rotary_emb.forward
        self.rotary = sys.modules[type(inner.layers[0].self_attn).__module__].apply_rotary_pos_emb
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.norm, self.head = inner.norm.forward, model.lm_head.forward

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache) -> torch.Tensor:
        """(A, V) float32 logits of the next token: what `model(input_ids=..., attention_mask=..., position_ids=...,
        cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()` returns, bitwise (`past_key_values=`
        before transformers 5.24: kv_cache.CACHE_KEY).

        input_ids, position_ids: (A, 1); attention_mask: (A, 1, 1, K) bool, the keys each row sees after this
        token is written; cache: a DynamicCache of PreallocatedLayer layers (written in place, as the model's)."""
        hidden = self.embed(input_ids)  # (A, 1, C)
        cos, sin = self.rotary_embedding(hidden, position_ids)  # (A, 1, D) each, in the model's dtype
        # sdpa turns a bool mask into an additive one (0 where seen, -inf elsewhere, the query's dtype) on every
        # call: once here for every layer, the same values
        attention_mask = torch.zeros_like(attention_mask, dtype=hidden.dtype).masked_fill_(
            attention_mask.logical_not(), float("-inf"))
        rows = hidden.shape[0]
        for layer, cached in zip(self.layers, cache.layers):
            residual = hidden
            normed = layer.norm_in(hidden)
            heads = (rows, 1, -1, layer.head_dim)
            query, key = layer.q(normed).view(heads), layer.k(normed).view(heads)  # (A, 1, H or Hkv, D)
            if layer.q_norm is not None:
                query, key = layer.q_norm(query), layer.k_norm(key)
            query, key = self.rotary(query.transpose(1, 2), key.transpose(1, 2), cos, sin)  # (A, H or Hkv, 1, D)
            key, value = cached.update(key, layer.v(normed).view(heads).transpose(1, 2))  # (A, Hkv, K, D) each
            if layer.groups > 1:  # transformers' pack_gqa: each key/value head's queries attend as one block
                query = query.reshape(rows, query.shape[1] // layer.groups, layer.groups, query.shape[-1])
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 scale=layer.scaling, is_causal=False)
            out = out.reshape(rows, -1, 1, value.shape[-1]).transpose(1, 2).contiguous()  # (A, 1, H, D)
            hidden = residual + layer.o(out.reshape(rows, 1, -1))
            residual = hidden
            normed = layer.norm_post(hidden)
            hidden = residual + layer.down(layer.act(layer.gate(normed)) * layer.up(normed))
        return self.head(self.norm(hidden))[:, -1].float()


def forward_step(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache) -> torch.Tensor:
    """(A, V) float32 logits of the next token from the model's own forward: what LeanDecodeStep reproduces.
    input_ids, position_ids: (A, 1); attention_mask: the step's slice of decode_keys."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                 logits_to_keep=1, **{CACHE_KEY: cache}).logits[:, -1].float()


def decode_step_for(model, cache):
    """A LeanDecodeStep where it reproduces this model's forward with this cache, else None (call the model).
    A peft model steps through its base model, whose adapted layers' forwards add their adapters (what the
    peft model's forward does with no adapter names given)."""
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    if model.training:  # the forward would apply attention dropout
        return None
    if not (_shape_supported(model) and preallocated(cache)):
        return None
    parameter = next(model.parameters())
    if parameter.device.type not in ("cpu", "cuda") or os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA", "0") == "1":
        return None  # transformers' sdpa wrapper attends grouped heads another way there (enable_gqa)
    autocast = torch.is_autocast_enabled(parameter.device.type)
    if not reproduces_forward(type(model), model.config.to_json_string(), parameter.dtype, autocast):
        return None
    return LeanDecodeStep(model)


@functools.cache
def reproduces_forward(model_class: type, config_json: str, dtype: torch.dtype, autocast: bool) -> bool:
    """Whether LeanDecodeStep gives the logits and cache writes of `model_class`'s forward bitwise (the
    installed transformers' math, not a remembered one), on a small random model of this config: one layer,
    the same heads, head size, rotary embedding and activation, narrow hidden and MLP widths and a
    128-token vocabulary (a probe of a 7B model's config costs ~50k parameters, not a layer's 250M).
    Run on the CPU, under bf16 autocast when the caller runs under it."""
    config = model_class.config_class.from_dict(json.loads(config_json))
    config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size = 1, 32, 48, 128
    config.pad_token_id = config.bos_token_id = config.eos_token_id = None
    config.tie_word_embeddings = False
    config._attn_implementation = "sdpa"
    for key in ("layer_types", "mlp_only_layers"):
        if isinstance(getattr(config, key, None), list):
            setattr(config, key, getattr(config, key)[:1])
    with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the run's generator alone
        torch.manual_seed(0)
        probe = model_class(config).to(dtype).eval()
        tokens = torch.randint(0, config.vocab_size, (3, 2))  # (rows, steps)
    try:
        return _same_steps(probe, tokens, autocast)
    except (RuntimeError, NotImplementedError):  # e.g. a dtype this CPU's kernels refuse: the model's forward then
        return False


def _same_steps(probe, tokens: torch.Tensor, autocast: bool) -> bool:
    """Whether the probe model's forward and LeanDecodeStep agree bitwise over len(tokens[0]) decode steps."""
    prompts = [[5, 9, 2, 7], [3], [8, 8]]
    steps = tokens.shape[1]
    results = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for step in (functools.partial(forward_step, probe), LeanDecodeStep(probe)):
            cache, _, mask = prefill(probe, prompts, 0, torch.device("cpu"), steps)
            if not preallocated(cache):
                return False
            keys, position = decode_keys(mask, steps, sdpa=True), mask.sum(-1, keepdim=True)  # (3, 1, 1, P + 2), (3, 1)
            logits = [step(tokens[:, t:t + 1], keys[..., :mask.shape[1] + t + 1], position + t, cache)
                      for t in range(steps)]
            results.append((torch.stack(logits), cache.layers[0].keys, cache.layers[0].values))
    return all(torch.equal(a, b) for a, b in zip(*results))
