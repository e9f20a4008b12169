"""r1kit's decode loop (shared prefill, finished rows leave the batch) samples what `generate` samples."""

import pytest
import torch

from r1kit.data.templates import build_messages, encode_prompt
from r1kit.rollout.decode import decode
from r1kit.rollout.hf import HFEngine, eos_ids
from r1kit.types import SamplingParams

QUESTIONS = ["Ana has 3 pens, gets 4. How many pens now?", "Bo has 12 cups, loses 5, finds 1. How many cups now?",
             "7+8?"]


class GenerateEngine(HFEngine):
    """The engine as it was: `model.generate` with the SeededSampler as a logits processor, for every chunk."""

    def _generate_chunk(self, model, items, sampling):
        stop = eos_ids(model, self.tokenizer)
        return self._completions(items, *self._transformers_generate(model, items, sampling, stop), stop)


@pytest.mark.parametrize("sampling", [
    SamplingParams(max_new_tokens=14, temperature=0.0),
    SamplingParams(max_new_tokens=14, temperature=1.0, seed=3),
    SamplingParams(max_new_tokens=14, temperature=0.7, top_k=20, top_p=0.9, seed=4),
], ids=["greedy", "seeded", "top-k-top-p"])
@pytest.mark.parametrize("chunk", [256, 5])  # 5: chunks cut across groups
@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # sdpa decodes with a 4D key mask, eager a 2D one
def test_decode_loop_equals_generate(small_model, tiny_tokenizer, sampling, chunk, attention, monkeypatch):
    monkeypatch.setattr(small_model.config, "_attn_implementation", attention)
    prompts = [encode_prompt(tiny_tokenizer, build_messages(q)) for q in QUESTIONS]
    new = HFEngine(small_model, tiny_tokenizer, generation_batch_size=chunk).generate(prompts, 4, sampling)
    old = GenerateEngine(small_model, tiny_tokenizer, generation_batch_size=chunk).generate(prompts, 4, sampling)
    assert [c.token_ids for c in new] == [c.token_ids for c in old]
    assert [c.finish_reason for c in new] == [c.finish_reason for c in old]
    assert [c.prompt_index for c in new] == [c.prompt_index for c in old]
    for a, b in zip(new, old):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    assert {c.finish_reason for c in new} == {"stop", "length"} or sampling.temperature == 0  # both paths exercised


def test_rows_that_end_leave_the_batch(small_model, tiny_tokenizer):
    """A row that sampled its end token stops: later positions are padding, its length counts the end token."""
    prompt = encode_prompt(tiny_tokenizer, build_messages("1+2?"))
    eos = tiny_tokenizer.eos_token_id
    out = decode(small_model, [prompt], [0] * 6, [11, 12, 13, 14, 15, 16], 20, {eos}, tiny_tokenizer.pad_token_id)
    for row in range(6):
        n = out.lengths[row].item()
        if out.stopped[row]:
            assert out.tokens[row, n - 1].item() == eos
            assert (out.tokens[row, n:] == tiny_tokenizer.pad_token_id).all() and (out.logprobs[row, n:] == 0).all()
        else:
            assert n == 20 and eos not in out.tokens[row].tolist()
    assert out.stopped.any() and len(set(map(tuple, out.tokens.tolist()))) > 1


def test_full_attention_models_decode_into_a_preallocated_cache(small_model):
    """The equality tests above run through PreallocatedLayer: a Llama's layers are all full attention."""
    from r1kit.rollout.kv_cache import PreallocatedLayer, new_cache

    cache = new_cache(small_model, 10)
    assert len(cache.layers) == small_model.config.num_hidden_layers
    assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    layer = cache.layers[0]
    k = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).view(2, 1, 4, 3)
    keys, _ = layer.update(k, k + 1)
    keys, values = layer.update(k[:, :, :1] * -1, k[:, :, :1])
    assert layer.get_seq_length() == 5 and torch.equal(keys[:, :, :4], k) and torch.equal(keys[:, :, 4:], -k[:, :, :1])
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys, torch.cat([keys[1:], keys[1:], keys[:1]]))
    with pytest.raises(ValueError, match="holds 10 positions"):
        layer.update(torch.zeros(3, 1, 6, 3), torch.zeros(3, 1, 6, 3))


def test_bf16_autocast_generation_stays_close_to_the_fp32_trainer(small_model, tiny_tokenizer):
    """rollout.autocast=bfloat16 samples from a bf16-rounded policy: its logprobs differ from the fp32 trainer's
    (so bf16 really ran), by little (measured on the tiny-sft model: mean 5e-4, max 0.06 nats)."""
    from r1kit.batch import completion_logprobs, make_batch

    rows = [{"prompt_ids": encode_prompt(tiny_tokenizer, build_messages(q))} for q in QUESTIONS]
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=2)
    out = HFEngine(small_model, tiny_tokenizer, autocast="bfloat16").generate([r["prompt_ids"] for r in rows], 4,
                                                                             sampling)
    batch = make_batch(out, rows, torch.zeros(len(out)), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(small_model, batch)
    gap = (trainer - batch.engine_logprobs)[batch.completion_mask.bool()].abs()
    assert 0 < gap.max().item() < 0.2 and gap.mean().item() < 0.02, (gap.mean().item(), gap.max().item())
    assert small_model.lm_head.weight.dtype == torch.float32  # the policy itself stays fp32


def test_autocast_is_for_the_hf_engine_only():
    from r1kit.config import ConfigError
    from r1kit.recipe import load_recipe

    load_recipe(None, ["rollout.autocast=bfloat16"])
    with pytest.raises(ConfigError, match="rollout.autocast=bfloat16 applies to rollout.engine=hf only"):
        load_recipe(None, ["rollout.autocast=bfloat16", "rollout.engine=vllm"])
    with pytest.raises(ValueError, match="autocast must be"):
        HFEngine(None, None, autocast="fp8")
