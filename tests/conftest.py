"""Shared fixtures: a tiny tokenizer and a small random Llama model, built offline in memory."""

import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from r1kit.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def small_model(tiny_tokenizer):
    """A 2-layer, 64-wide random model: fast, and enough to test the plumbing."""
    from r1kit.models import build_tiny_model

    return build_tiny_model(tiny_tokenizer, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tiny_tokenizer):
    """The small model saved like a hub checkpoint (save_pretrained), for trainer and CLI tests."""
    from r1kit.models import build_tiny_model

    path = tmp_path_factory.mktemp("small-model")
    model = build_tiny_model(tiny_tokenizer, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)
