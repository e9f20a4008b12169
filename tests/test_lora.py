"""LoRA, fully: adapters resume exactly, final/ is merged or the PEFT adapter, all-linear targets, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from r1kit.config import ConfigError
from r1kit.recipe import load_recipe
from r1kit.trainer import train
from test_trainer import cfg_for, weights

LORA = ["model.lora.enabled=true", "model.lora.r=4", "train.learning_rate=5e-2", "eval.before=false"]


def test_lora_resumes_exactly(small_model_dir, tmp_path):
    straight = tmp_path / "straight"
    train(cfg_for(small_model_dir, straight, *LORA, "train.max_steps=4", "train.save_every=2"))

    import reward_fixtures

    reward_fixtures.CALLS["n"] = 0
    crashing = [*LORA, "rewards=[{name: reward_fixtures.fail_on_third_call}]", "train.max_steps=4", "train.save_every=2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(small_model_dir, tmp_path / "resumed", *crashing))
    train(cfg_for(small_model_dir, tmp_path / "resumed", *crashing, "train.resume_from=latest"))
    a, b = weights(straight / "t" / "final"), weights(tmp_path / "resumed" / "t" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)  # adapters and their optimizer state came back


def test_final_can_be_the_peft_adapter(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, *LORA, "train.max_steps=1", "model.lora.save=adapter",
                  "model.lora.target_modules=all-linear", "eval.after=false"))
    final = tmp_path / "t" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}  # all-linear: every linear layer but the head
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_model_dir), str(final))
    merged = model.merge_and_unload().state_dict()
    base = load_file(f"{small_model_dir}/model.safetensors")
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # the adapter carries the update


def test_targets_that_match_nothing_name_the_key(small_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"model.lora.target_modules=\['qkv'\] matches no module.*q_proj"):
        train(cfg_for(small_model_dir, tmp_path, *LORA, "model.lora.target_modules=[qkv]"))
    assert not (tmp_path / "t" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="list of module names or 'all-linear'"):
        load_recipe(None, ["model.lora.enabled=true", "model.lora.target_modules=every-linear"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("override, key", [("model.load_in_4bit=true", "model.load_in_4bit"),
                                           ("train.optim=paged_adamw_8bit", "train.optim=paged_adamw_8bit")])
def test_bitsandbytes_knobs_fail_clearly_without_cuda(small_model_dir, tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"{key} needs bitsandbytes on a CUDA GPU"):
        train(cfg_for(small_model_dir, tmp_path, *LORA, override))
    assert not (tmp_path / "t").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="set model.lora.enabled=true"):
        load_recipe(None, ["model.load_in_4bit=true"])
