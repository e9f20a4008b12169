"""The HF engine: grouping, finish reasons, and logprobs equal to the trainer's own."""

import contextlib

import pytest
import torch

from r1kit.batch import completion_logprobs, make_batch
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.rollout.hf import HFEngine, left_pad
from r1kit.types import SamplingParams

QUESTIONS = ["Ana has 3 pens, gets 4. How many pens now?", "Bo has 12 cups, loses 5, finds 1. How many cups now?"]


def prompts(tok):
    return [encode_prompt(tok, build_messages(q)) for q in QUESTIONS]


def test_left_pad():
    ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]


def test_generate_groups_and_finish_reasons(small_model, tiny_tokenizer):
    engine = HFEngine(small_model, tiny_tokenizer, generation_batch_size=3)  # forces several chunks
    out = engine.generate(prompts(tiny_tokenizer), n=4, sampling=SamplingParams(max_new_tokens=12, seed=0))
    assert [c.prompt_index for c in out] == [0] * 4 + [1] * 4
    for c in out:
        assert len(c.token_ids) == len(c.logprobs) <= 12
        if c.finish_reason == "length":
            assert len(c.token_ids) == 12 and tiny_tokenizer.eos_token_id not in c.token_ids
        else:
            assert c.token_ids[-1] == tiny_tokenizer.eos_token_id
        assert all(lp <= 0 for lp in c.logprobs)


@pytest.mark.parametrize("case", ["plain", "sharded", "remote code", "quantized"])
def test_generation_grad_mode(small_model, tiny_tokenizer, case):
    """A transformers model, unsharded and unquantized, generates under inference mode (no autograd
    bookkeeping) and trains afterwards; otherwise under no_grad: ZeRO-3 and FSDP2 reuse their gathered
    buffers in training forwards, and remote code or quantized layers may keep a tensor made while
    generating, which autograd would refuse as an inference tensor."""
    class RemoteCode(type(small_model)):  # a forward defined outside transformers, as trust_remote_code loads
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    modes = []
    hook = small_model.register_forward_hook(lambda *_: modes.append(
        (torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    own_class = type(small_model)
    try:
        if case == "remote code":
            small_model.__class__ = RemoteCode
        if case == "quantized":
            small_model.hf_quantizer = object()
        engine = HFEngine(small_model, tiny_tokenizer, gather=contextlib.nullcontext if case == "sharded" else None)
        out = engine.generate(prompts(tiny_tokenizer), 2, SamplingParams(max_new_tokens=6, seed=0))
    finally:
        hook.remove()
        small_model.__class__ = own_class
        vars(small_model).pop("hf_quantizer", None)
    assert modes and set(modes) == {(case == "plain", False)}
    rows = [{"prompt_ids": p} for p in prompts(tiny_tokenizer)]
    batch = make_batch(out, rows, torch.ones(len(out)), tiny_tokenizer.pad_token_id)
    (completion_logprobs(small_model, batch, 1.0) * batch.completion_mask).sum().backward()
    assert all(p.grad is not None for p in small_model.parameters() if p.requires_grad)
    small_model.zero_grad(set_to_none=True)


def test_sampling_is_seeded(small_model, tiny_tokenizer):
    engine = HFEngine(small_model, tiny_tokenizer)
    sampling = SamplingParams(max_new_tokens=10, seed=123)
    a = engine.generate(prompts(tiny_tokenizer), 3, sampling)
    b = engine.generate(prompts(tiny_tokenizer), 3, sampling)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_equal_trainer_logprobs(small_model, tiny_tokenizer, temperature):
    """fp32: the engine's sampled-token logprobs and the trainer's forward agree to 1e-5."""
    engine = HFEngine(small_model, tiny_tokenizer)
    rows = [{"prompt_ids": p} for p in prompts(tiny_tokenizer)]
    out = engine.generate([r["prompt_ids"] for r in rows], 4,
                          SamplingParams(max_new_tokens=16, temperature=temperature, seed=1))
    batch = make_batch(out, rows, torch.zeros(len(out)), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(small_model, batch, temperature)
    mask = batch.completion_mask.bool()
    gap = (trainer - batch.engine_logprobs)[mask].abs().max().item()
    assert gap <= 1e-5, gap
    assert batch.logprob_gap(trainer, trainer)["max"] == pytest.approx(gap)


def test_greedy_is_argmax(small_model, tiny_tokenizer):
    engine = HFEngine(small_model, tiny_tokenizer)
    p = prompts(tiny_tokenizer)[:1]
    out = engine.generate(p, 1, SamplingParams(max_new_tokens=5, temperature=0.0))[0]
    with torch.no_grad():
        logits = small_model(torch.tensor([p[0] + out.token_ids[:1]])).logits
    assert out.token_ids[0] == logits[0, len(p[0]) - 1].argmax().item()


def test_shows_reasoning():
    from r1kit.evaluate import shows_reasoning

    assert shows_reasoning("<think>3+4=7.</think><answer>7</answer>")
    assert not shows_reasoning("<think></think><answer>7</answer>")
    assert not shows_reasoning("<think>  \n</think><answer>7</answer>") and not shows_reasoning("7")
    assert shows_reasoning("<reasoning>x</reasoning><answer>7</answer>") and shows_reasoning("<think>unfinished")


def test_the_models_own_generation_knobs_do_not_apply(small_model, tiny_tokenizer):
    """A checkpoint's generation_config (repetition penalty, n-gram ban, top-k/p, temperature) does not
    change what the engine samples: only SamplingParams does (tests/test_real_model.py: the same on SmolLM2)."""
    engine = HFEngine(small_model, tiny_tokenizer)
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1.0, top_k=0, seed=5)
    plain = engine.generate(prompts(tiny_tokenizer), 2, sampling)
    g = small_model.generation_config
    g.repetition_penalty, g.no_repeat_ngram_size, g.top_k, g.top_p, g.temperature = 5.0, 1, 1, 0.1, 0.05
    knobbed = engine.generate(prompts(tiny_tokenizer), 2, sampling)
    assert [c.token_ids for c in knobbed] == [c.token_ids for c in plain]
    assert [c.logprobs for c in knobbed] == [c.logprobs for c in plain]
    assert g.repetition_penalty == 5.0  # the model's config is restored afterwards
