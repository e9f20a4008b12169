"""The built-in tiny model and tokenizer; model path resolution; import hygiene."""

import os
import subprocess
import sys

import pytest
import torch

from r1kit.models import FORMAT_TAGS, resolve_model_path


def test_tokenizer_round_trip_keeps_format_tags(tiny_tokenizer, tmp_path):
    text = "<think>12+5=17. 17-3=14.</think><answer>14</answer>"
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert tiny_tokenizer.convert_ids_to_tokens(ids[:2]) == ["<think>", "1"]
    # tags are ordinary tokens: decoding with skip_special_tokens keeps them (TRL decodes that way)
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not set(FORMAT_TAGS) & set(tiny_tokenizer.all_special_tokens)

    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False).input_ids == ids
    assert again.decode(ids, skip_special_tokens=True) == text
    every_char = "".join(chr(c) for c in range(32, 127)) + "\n"
    assert again.decode(again(every_char, add_special_tokens=False).input_ids) == every_char


def test_model_saves_and_loads_like_a_hub_model(small_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    assert model.config.model_type == "llama" and not model.config.tie_word_embeddings


def test_tiny_model_size(tiny_tokenizer):
    from r1kit.models import build_tiny_model

    n = sum(p.numel() for p in build_tiny_model(tiny_tokenizer).parameters())
    assert 2_000_000 < n < 3_000_000


def test_resolve_model_path(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path("./no/such/model")


def test_builtin_checkpoint_ships():
    path = resolve_model_path("builtin:tiny-sft")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(path).chat_template


def test_importing_r1kit_imports_no_torch():
    code = "import sys, r1kit, r1kit.config, r1kit.rewards, r1kit.data.answers; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.slow  # fresh interpreters importing torch
def test_loading_a_model_bounds_the_cpu_kernel_caches_unless_the_user_chose():
    # oneDNN's per-shape kernel caches grew without bound on RL's ever-new sequence lengths (r1kit.models)
    code = ("import os; from r1kit.config import ModelCfg; from r1kit.models import load_model, build_tiny_tokenizer; "
            "load_model(ModelCfg(name_or_path='builtin:tiny-init', dtype='bfloat16'), build_tiny_tokenizer()); "
            "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["32", "32"], out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "LRU_CACHE_CAPACITY": "300"})
    assert out.stdout.split() == ["32", "300"], out.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_adamw_is_the_default_and_updates_like_the_op_by_op_one(dtype):
    """train.optim defaults to torch's fused AdamW (transformers' default too); its steps match adamw_torch's
    (fp32: to 1e-6 over several steps with weight decay; bf16: to one bf16 rounding step)."""
    from r1kit.config import TrainCfg
    from r1kit.models import make_optimizer

    assert TrainCfg().optim == "adamw_torch_fused"
    grads = [torch.randn(3, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    results = {}
    for optim in ("adamw_torch_fused", "adamw_torch"):
        weight = torch.nn.Parameter(torch.linspace(-1, 1, 15).view(3, 5).to(dtype))
        optimizer = make_optimizer([weight], TrainCfg(optim=optim, learning_rate=0.1, weight_decay=0.1))
        assert optimizer.defaults["fused"] is (optim == "adamw_torch_fused")
        for grad in grads:
            weight.grad = grad.to(dtype)
            optimizer.step()
        results[optim] = weight.detach().float()
    start = torch.linspace(-1, 1, 15).view(3, 5)
    assert (results["adamw_torch"] - start).abs().min() > 0.01  # the steps moved every weight
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(results["adamw_torch_fused"], results["adamw_torch"], rtol=0, atol=tolerance)
