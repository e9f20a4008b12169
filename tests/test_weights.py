"""What vLLM receives after each step: checkpoint names, LoRA merged, the head always present."""

import torch
from safetensors.torch import load_file, load

from r1kit.rollout.weights import export_state_dict, save_weights, weights_bytes


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
