"""What vLLM receives after each step: checkpoint names, LoRA merged, the head always present."""

from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file, load

from r1kit.rollout.weights import Gatherer, export_buckets, export_state_dict, load_unit, plan_buckets, save_weights, weights_bytes


def test_plain_model_exports_its_checkpoint_names(small_model, tmp_path):
    state = export_state_dict(small_model)
    assert set(state) == set(small_model.state_dict())
    on_disk = load_file(save_weights(state, tmp_path))
    assert all(torch.equal(on_disk[k], v) for k, v in small_model.state_dict().items())
    assert load(weights_bytes(state)).keys() == on_disk.keys()


def test_tied_head_is_written_out(small_model, tmp_path):
    tied = small_model
    tied.lm_head.weight = tied.model.embed_tokens.weight  # tie them, as many hub models do
    on_disk = load_file(save_weights(export_state_dict(tied), tmp_path))  # shared storage copied, not refused
    assert torch.equal(on_disk["lm_head.weight"], on_disk["model.embed_tokens.weight"])


def test_lora_is_merged_under_the_base_names_and_left_unmerged(small_model):
    from r1kit.config import LoraCfg
    from r1kit.models import apply_lora

    base_names = set(small_model.state_dict())
    lora = apply_lora(small_model, LoraCfg(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero: make the adapters matter
    state = export_state_dict(lora)
    assert set(state) == base_names
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = lora(x).logits
    from r1kit.models import build_tiny_model, build_tiny_tokenizer

    fresh = build_tiny_model(build_tiny_tokenizer(), seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4)
    fresh.load_state_dict(state)  # a fresh model of the same shape, loaded with the export
    with torch.no_grad():
        assert torch.allclose(fresh(x).logits, expected, atol=1e-5)
        assert torch.equal(lora(x).logits, expected)  # the adapters are unmerged again


def _joined(model, max_bytes):
    parts = list(export_buckets(model, max_bytes))
    assert [(p, n) for p, n, _ in parts] == [(i, len(parts)) for i in range(1, len(parts) + 1)]
    joined = {}
    for _, _, bucket in parts:
        assert not set(bucket) & set(joined)  # every name travels once
        joined.update(bucket)
    return parts, joined


@pytest.mark.parametrize("tie", [False, True])
def test_bucketed_export_equals_the_whole_export(small_model, tie):
    if tie:
        small_model.lm_head.weight = small_model.model.embed_tokens.weight
    whole = export_state_dict(small_model)
    layer_bytes = sum(t.numel() * 4 for n, t in whole.items() if n.startswith("model.layers.0."))
    for max_bytes in (1, layer_bytes, 10**9):  # every unit alone, one layer per part, everything in one part
        parts, joined = _joined(small_model, max_bytes)
        assert set(joined) == set(whole)
        assert all(torch.equal(joined[k], whole[k]) for k in whole)
        assert "lm_head.weight" in joined and len(parts) == {1: 3, layer_bytes: 3, 10**9: 1}[max_bytes]
        for _, _, bucket in parts:  # a decoder layer never splits across parts (vLLM fuses q/k/v, gate/up)
            assert len({load_unit(n) for n in bucket}) == 1 or max_bytes == 10**9
    if tie:
        assert torch.equal(joined["lm_head.weight"], joined["model.embed_tokens.weight"])


def test_buckets_pack_whole_units_up_to_the_bound():
    sizes = {"model.embed_tokens.weight": 40, "model.layers.0.q": 10, "model.layers.0.k": 10,
             "model.layers.1.q": 20, "model.layers.2.q": 50, "model.norm.weight": 1, "lm_head.weight": 40}
    assert plan_buckets(sizes, 81) == [["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"],
                                       ["model.layers.0.q", "model.layers.0.k", "model.layers.1.q"],
                                       ["model.layers.2.q"]]
    assert plan_buckets(sizes, 30) == [["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"],
                                       ["model.layers.0.q", "model.layers.0.k"], ["model.layers.1.q"],
                                       ["model.layers.2.q"]]  # units over the bound travel alone


def test_lora_buckets_equal_the_merged_export(small_model):
    from r1kit.config import LoraCfg
    from r1kit.models import apply_lora

    lora = apply_lora(small_model, LoraCfg(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    whole = export_state_dict(lora)
    parts, joined = _joined(lora, 1)
    assert len(parts) == 3 and set(joined) == set(whole)
    assert all(torch.equal(joined[k], whole[k]) for k in whole)


@pytest.mark.parametrize("keep", [True, False])
def test_sharded_weights_are_gathered_one_layer_at_a_time(small_model, keep):
    """What ZeRO-3/FSDP2 see (r1kit.distributed.weights_gatherer): one gather per load unit, never the whole
    model; ranks that only take part in the gathers (keep=False) hold nothing."""
    name_of = {id(t): n for n, t in small_model.state_dict(keep_vars=True).items()}
    calls = []

    @contextmanager
    def whole(tensors):
        calls.append({load_unit(name_of[id(t)]) for t in tensors})
        yield [t * 1 for t in tensors]  # a fresh full copy, as a gather gives

    parts = list(export_buckets(small_model, 10**9, Gatherer(whole=whole, collective=True), keep=keep))
    assert calls == [{""}, {"model.layers.0"}, {"model.layers.1"}]  # one part, three gathers
    assert len(parts) == 1 and (parts[0][2] == {} if not keep else set(parts[0][2]) == set(export_state_dict(small_model)))
