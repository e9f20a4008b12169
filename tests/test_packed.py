"""bf16 CPU generation with prepacked linear weights computes exactly what the plain layers compute."""

import pytest
import torch

import r1kit.rollout.packed as packed
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.rollout.hf import HFEngine
from r1kit.types import SamplingParams

needs_packing = pytest.mark.skipif(not packed.packing_available(),
                                   reason="this PyTorch build or CPU has no oneDNN bf16 weight packing")


@pytest.mark.skipif(not packed.onednn_bf16(), reason="no oneDNN bf16 on this CPU")
def test_packing_is_used_wherever_onednn_computes_bf16():
    """Where oneDNN does bf16 matmuls (this CI machine's AMX CPU), the probe finds the packed ops there and
    bitwise equal to F.linear: a False here means the ops moved or disagree, and generation got slower."""
    assert packed.packing_available()


def _bf16_model(tiny_tokenizer, **shape):
    from r1kit.models import build_tiny_model

    shape = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, **shape}
    return build_tiny_model(tiny_tokenizer, seed=0, **shape).to(torch.bfloat16).eval()


def _instance_forwards(model) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in vars(m)]


@needs_packing
@pytest.mark.parametrize("rows, length", [(1, 1), (5, 1), (32, 1), (3, 40)], ids=["1-row", "5-rows", "32-rows", "prefill"])
def test_packed_layers_give_the_same_logits(tiny_tokenizer, rows, length):
    model = _bf16_model(tiny_tokenizer, attention_bias=True)  # biases too (Qwen2's q/k/v have them)
    ids = torch.randint(3, len(tiny_tokenizer), (rows, length), generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with packed.packed_linears(model) as count:
            inside = model(input_ids=ids).logits
    assert count == len(packed.packable_linears(model)) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    assert torch.equal(inside, plain)
    assert not _instance_forwards(model)  # every layer has its own forward back


@needs_packing
def test_layers_are_restored_when_generation_fails(tiny_tokenizer):
    model = _bf16_model(tiny_tokenizer)
    with pytest.raises(RuntimeError, match="stop"), torch.inference_mode(), packed.packed_linears(model):
        assert _instance_forwards(model)
        raise RuntimeError("stop")
    assert not _instance_forwards(model)
    model.train()  # and the model trains as before (the packed ops have no autograd)
    loss = model(input_ids=torch.tensor([[3, 4, 5, 6]]), labels=torch.tensor([[3, 4, 5, 6]])).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() == 2)


@needs_packing
def test_only_plain_bf16_cpu_linears_are_packed(tiny_tokenizer):
    class Subclass(torch.nn.Linear):  # quantized and adapter layers are subclasses: their forward is theirs
        pass

    model = _bf16_model(tiny_tokenizer)
    layer = model.model.layers[0]
    layer.mlp.down_proj = Subclass(160, 64, bias=False, dtype=torch.bfloat16)
    layer.self_attn.o_proj.float()
    chosen = packed.packable_linears(model)
    assert layer.mlp.down_proj not in chosen and layer.self_attn.o_proj not in chosen
    assert len(chosen) == 13
    assert packed.packable_linears(model.float()) == []  # fp32 models: MKL's sgemm, nothing to pack


@needs_packing
def test_engine_samples_the_same_with_packed_weights(tiny_tokenizer, monkeypatch):
    """Same tokens and logprobs whether the engine packs or not, and the packed path is the one taken."""
    model = _bf16_model(tiny_tokenizer)
    prompts = [encode_prompt(tiny_tokenizer, build_messages(q)) for q in ("2+3?", "Ana has 3 pens, gets 4. How many?")]
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    calls = []
    real = packed._packed_forward
    monkeypatch.setattr(packed, "_packed_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with_packing = HFEngine(model, tiny_tokenizer).generate(prompts, 4, sampling)
    assert calls and not _instance_forwards(model)
    monkeypatch.setattr(packed, "packing_available", lambda: False)
    calls.clear()
    without = HFEngine(model, tiny_tokenizer).generate(prompts, 4, sampling)
    assert not calls
    assert [c.token_ids for c in with_packing] == [c.token_ids for c in without]
    assert [c.logprobs for c in with_packing] == [c.logprobs for c in without]  # bitwise
    assert len({tuple(c.token_ids) for c in without}) > 1
