"""The policy forward (r1kit.forward): chunked scoring through the head, padded, packed or with shared
prompts, gives the full-logits logprobs, entropy and gradient (fp32, 1e-5) on real models: untied and tied
heads, temperature, left-padded prompts and right-padded completions, LoRA, gradient checkpointing."""

import pytest
import torch

from r1kit.batch import RolloutBatch, completion_logprobs_and_entropy, full_logits_logprobs_and_entropy
from r1kit.forward import packed_layout, score_completions, shared_prefix_layout

PAD = 0


def ragged_batch(vocab: int, seed: int = 0, prompt_lens=(3, 7, 5, 7, 4), completion_lens=(6, 1, 4, 6, 2)) -> RolloutBatch:
    """5 completions with prompts of 3..7 tokens (left-padded) and completions of 1..6 tokens (right-padded)."""
    g = torch.Generator().manual_seed(seed)
    P, C = max(prompt_lens), max(completion_lens)
    prompt_ids, prompt_mask = torch.full((5, P), PAD), torch.zeros(5, P, dtype=torch.long)
    completion_ids, completion_mask = torch.full((5, C), PAD), torch.zeros(5, C, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        prompt_ids[i, P - p:] = torch.randint(3, vocab, (p,), generator=g)
        prompt_mask[i, P - p:] = 1
        completion_ids[i, :c] = torch.randint(3, vocab, (c,), generator=g)
        completion_mask[i, :c] = 1
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(5, C),
                        torch.tensor([1.0, -0.5, 0.3, 2.0, -1.0]), torch.zeros(5, dtype=torch.bool))


def build(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    arch = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, pad_token_id=PAD)
    if kind == "qwen2-tied":
        return Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **arch))
    return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **arch))


def loss_of(logprobs, entropy, batch):
    """A loss that touches every scored token through both outputs (as the policy loss with an entropy bonus)."""
    mask = batch.completion_mask.float()
    return ((logprobs * batch.advantages[:, None] - 0.1 * entropy) * mask).sum()


def scores_and_grads(model, batch, fn, **kwargs):
    model.zero_grad(set_to_none=True)
    logprobs, entropy = fn(model, batch, 0.7, entropy_grad=True, **kwargs)
    loss_of(logprobs, entropy, batch).backward()
    return logprobs.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(model, batch, **kwargs):
    mask = batch.completion_mask.bool()
    ref_lp, ref_ent, ref_grads = scores_and_grads(model, batch, full_logits_logprobs_and_entropy)
    lp, ent, got = scores_and_grads(model, batch, completion_logprobs_and_entropy, **kwargs)
    torch.testing.assert_close(lp[mask], ref_lp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[mask], ref_ent[mask], atol=1e-5, rtol=1e-5)
    assert (lp[~mask] == 0).all() and (ent[~mask] == 0).all()  # padding is never scored
    assert got.keys() == ref_grads.keys() and got
    for name in ref_grads:
        torch.testing.assert_close(got[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def grouped_batch(vocab: int, seed: int = 0, groups=((4, (6, 1, 4, 0)), (7, (3, 5)), (2, (2, 6, 6)))) -> RolloutBatch:
    """Groups of completions sharing a prompt, as GRPO makes them: (prompt length, completion lengths) per
    group; one completion is empty."""
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for p, lengths in groups:
        prompt = torch.randint(3, vocab, (p,), generator=g)
        for c in lengths:
            prompts.append(prompt)
            completions.append(torch.randint(3, vocab, (c,), generator=g))
    n, P, C = len(prompts), max(len(p) for p in prompts), max(len(c) for c in completions)
    prompt_ids, prompt_mask = torch.full((n, P), PAD), torch.zeros(n, P, dtype=torch.long)
    completion_ids, completion_mask = torch.full((n, C), PAD), torch.zeros(n, C, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = p, 1
        completion_ids[i, :len(c)], completion_mask[i, :len(c)] = c, 1
    advantages = torch.linspace(-1.0, 1.5, n)
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.zeros(n, C), advantages,
                        torch.zeros(n, dtype=torch.bool))


@pytest.mark.parametrize("kind", ["llama-untied", "qwen2-tied"])
@pytest.mark.parametrize("layout", ["padded", "packed", "shared"])
def test_chunked_scores_and_gradients_equal_full_logits(kind, layout):
    model = build(kind)
    assert_same(model, ragged_batch(97), layout=layout)
    assert_same(model, grouped_batch(97), layout=layout)


def test_packed_and_padded_agree_under_gradient_checkpointing():
    model = build("llama-untied")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    assert_same(model, ragged_batch(97, seed=1), layout="packed")
    assert_same(model, grouped_batch(97, seed=1), layout="shared")


def test_lora_model_scores_like_full_logits():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build("qwen2-tied"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                          init_lora_weights=False))
    for layout in ("padded", "packed", "shared"):
        assert_same(model, grouped_batch(97, seed=2), layout=layout)


def test_bf16_shared_prompts_score_as_closely_as_the_padded_forward():
    # On a CPU the shared layout's attention runs in fp32 for a bf16 model (r1kit.prompt_attention):
    # its scores and gradients are as close to the fp32 computation as transformers' bf16 padded forward
    model = build("llama-untied").to(torch.bfloat16)
    exact = build("llama-untied").to(torch.bfloat16).float()  # the same (bf16-rounded) weights, in fp32
    batch = grouped_batch(97, seed=3)
    mask = batch.completion_mask.bool()
    ref_lp, _, ref_grads = scores_and_grads(exact, batch, full_logits_logprobs_and_entropy)
    errors = {}
    for layout in ("padded", "shared"):
        lp, _, grads = scores_and_grads(model, batch, completion_logprobs_and_entropy, layout=layout)
        assert all(g.dtype == torch.bfloat16 for g in grads.values())
        errors[layout] = [(lp[mask] - ref_lp[mask]).abs().max().item()] + [
            ((grads[n].float() - ref_grads[n]).abs().max() / ref_grads[n].abs().max()).item() for n in ref_grads]
    assert max(errors["padded"]) < 0.1
    assert all(s <= max(2 * p, 0.02) for s, p in zip(errors["shared"], errors["padded"])), errors


def test_a_bf16_cpu_model_gets_a_shared_row_of_a_multiple_of_32_positions_with_the_same_results():
    # oneDNN compiles bf16 CPU matmuls per shape, faster for row counts that are multiples of 32
    # (r1kit.algo.head.matmul_row_multiple): the shared row gets an unused tail, never attended to or scored.
    # Its results are those of the row without it, bitwise on this CPU (each row's products are summed
    # in the same order whatever the row count)
    from r1kit.forward import make_layout

    model = build("llama-untied").to(torch.bfloat16)
    batch = grouped_batch(97, seed=3)
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    assert make_layout("shared", build("llama-untied"), *args).input_ids.shape == (1, 43)  # fp32: no tail
    layout = make_layout("shared", model, *args)
    assert layout.input_ids.shape == (1, 64)
    results = []
    for made in (shared_prefix_layout(*args, segments=True), layout):
        model.zero_grad(set_to_none=True)
        lp, ent = score_completions(model, made, batch.completion_mask, 0.7, entropy_grad=True)
        loss_of(lp, ent, batch).backward()
        results.append([lp.detach(), ent.detach()] + [p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_packed_rows_hold_real_tokens_only():
    batch = ragged_batch(97, prompt_lens=(3, 2, 5, 4, 4))  # sequences of 9, 3, 9, 10, 6 tokens
    layout = packed_layout(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    # first-fit, longest first, rows of 10: [10], [9], [9], [6, 3]: 40 positions where padding has 5 x 11
    assert layout.input_ids.shape == (4, 10)
    assert layout.position_ids[3].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 0]  # sequences 6 and 3, a 1-token tail
    assert layout.attention_mask is None
    assert layout.scored.sum() == batch.completion_mask.sum()
    flat = layout.targets.reshape(-1)[layout.source]
    assert torch.equal(flat[batch.completion_mask.bool()], batch.completion_ids[batch.completion_mask.bool()])


def test_a_lora_adapter_on_the_head_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build("llama-untied"), LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(NotImplementedError, match="not a plain Linear"):
        completion_logprobs_and_entropy(model, ragged_batch(97))


def test_logits_transformed_after_the_head_are_refused():
    model = build("llama-untied")
    model.config.final_logit_softcapping = 30.0  # as Gemma-2 does after its head
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        completion_logprobs_and_entropy(model, ragged_batch(97))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packing_keeps_sequences_apart_in_each_attention(attn):
    # transformers builds the packed-sequence mask from restarting position ids for both implementations
    model = build("llama-untied")
    model.set_attn_implementation(attn)
    batch = ragged_batch(97, seed=3, prompt_lens=(3, 2, 5, 4, 4))
    padded, _ = completion_logprobs_and_entropy(model, batch, layout="padded", with_entropy=False)
    packed, _ = completion_logprobs_and_entropy(model, batch, layout="packed", with_entropy=False)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    grouped = grouped_batch(97, seed=3)
    padded, _ = completion_logprobs_and_entropy(model, grouped, layout="padded", with_entropy=False)
    shared, _ = completion_logprobs_and_entropy(model, grouped, layout="shared", with_entropy=False)
    torch.testing.assert_close(shared, padded, atol=1e-5, rtol=1e-5)


def test_packing_is_used_for_transformers_models_only():
    from r1kit.forward import packs_sequences

    model = build("llama")
    assert packs_sequences(model)

    class RemoteCode(torch.nn.Module):  # stands in for a trust_remote_code class: not under transformers.models
        pass

    assert not packs_sequences(RemoteCode())


def test_shared_rows_hold_each_prompt_once_per_row():
    batch = grouped_batch(97)  # prompts of 4, 7, 2 tokens; completions (6, 1, 4, 0), (3, 5), (2, 6, 6)
    layout = shared_prefix_layout(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    # units of prompt-1 + completions: 3 + 11 = 14, 6 + 8 = 14, 1 + 14 = 15 -> three rows of 15
    assert layout.input_ids.shape == (3, 15)
    assert layout.scored.sum() == batch.completion_mask.sum()
    flat = layout.targets.reshape(-1)[layout.source]
    mask = batch.completion_mask.bool()
    assert torch.equal(flat[mask], batch.completion_ids[mask])
    # the row of the 2-token prompt: its first token, then segments [last prompt token, completion minus its last]
    row = layout.input_ids[0]
    prompt = batch.prompt_ids[6, -2:]
    assert row[0] == prompt[0] and row[1] == prompt[1] and row[3] == prompt[1] and row[9] == prompt[1]
    assert layout.position_ids[0].tolist() == [0, 1, 2, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]
    allowed = layout.attention_mask[0, 0]
    assert allowed[4].tolist() == [True, False, False, True, True] + [False] * 10  # the prompt + its own segment so far
    assert not allowed[9, 1:9].any() and allowed[9, 0] and allowed[9, 9]  # a new segment sees the prompt only


def test_long_groups_are_cut_into_rows_that_each_carry_the_prompt():
    batch = grouped_batch(97, groups=((5, (6, 6, 6, 6)),))
    layout = shared_prefix_layout(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                  row_tokens=16)
    assert layout.input_ids.shape == (2, 16)  # 4 + 6 + 6 per row
    assert torch.equal(layout.input_ids[0, :4], layout.input_ids[1, :4])
    model = build("llama-untied")
    padded, _ = completion_logprobs_and_entropy(model, batch, layout="padded", with_entropy=False)
    for row_tokens in (16, 512):
        made = shared_prefix_layout(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                    row_tokens=row_tokens)
        shared, _ = score_completions(model, made, batch.completion_mask, with_entropy=False)
        torch.testing.assert_close(shared, padded, atol=1e-5, rtol=1e-5)


def test_shared_prompts_only_where_the_attention_takes_the_mask():
    from r1kit.batch import forward_layout

    model = build("llama-untied")
    assert forward_layout(model) == "shared"
    model.config.sliding_window, model.config.use_sliding_window = 4, True
    assert forward_layout(model) == "packed"


def token_identities(layout, batch) -> dict[int, tuple]:
    """flat position -> what sits there: ("completion", n, k) or ("prompt", first completion of the group, i),
    from the layout's `source` (a group's prompt lies just before its first non-empty segment)."""
    width = layout.input_ids.shape[1]
    completion_len = batch.completion_mask.sum(-1).tolist()
    prompt_len = batch.prompt_mask.sum(-1).tolist()
    out, groups = {}, {}
    for n, c in enumerate(completion_len):
        for k in range(c):
            out[int(layout.source[n, k])] = ("completion", n, k)
        group = tuple(batch.prompt_ids[n][batch.prompt_mask[n].bool()].tolist())
        if c and group not in groups:
            groups[group] = n
            start = int(layout.source[n, 0]) - (prompt_len[n] - 1)
            assert start // width == int(layout.source[n, 0]) // width  # the prompt is in the segment's row
            out.update({start + i: ("prompt", n, i) for i in range(prompt_len[n] - 1)})
    return out


def test_the_segment_index_lets_each_token_see_what_the_dense_mask_allows():
    # r1kit.prompt_attention's blocks, read back as (query, key) pairs of tokens, are the dense layout's mask
    batch = grouped_batch(97)  # prompts of 4, 7, 2 tokens; completions (6, 1, 4, 0), (3, 5), (2, 6, 6)
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
    layout = shared_prefix_layout(*args, segments=True)
    index = layout.attention_kwargs["r1kit_segments"]
    assert layout.input_ids.shape == (1, (3 + 6 + 1) + 33)  # one row, no unused tail
    dense = shared_prefix_layout(*args, row_tokens=10**6)  # no group cut either; rows placed first-fit
    at, dense_at = token_identities(layout, batch), token_identities(dense, batch)
    seen, queries = set(), []
    for block in index.blocks:
        for b, i in torch.nonzero(block.real).tolist():
            query = int(block.queries[b, i])
            queries.append(query)
            seen |= {(at[query], at[int(key)]) for key in block.keys[b][block.mask[b, 0, i]]}
    assert sorted(queries) == sorted(at)  # every token is a query once, and nothing else is
    mask = dense.attention_mask[:, 0]  # (R, W, W)
    width = dense.input_ids.shape[1]
    allowed = {(dense_at[r * width + q], dense_at[r * width + k]) for r, q, k in torch.nonzero(mask).tolist()
               if r * width + q in dense_at and r * width + k in dense_at}
    assert seen == allowed
    assert len(allowed) > len(at)  # the pattern is not trivial: tokens see more than themselves
    segment_blocks = index.blocks[1:]  # after the prompts' block: segments by length, at least half the longest
    assert [b.real.sum(-1).tolist() for b in segment_blocks] == [[6, 6, 6, 5, 4, 3], [2, 1]]


def test_a_model_whose_layers_do_not_attend_through_the_index_is_refused(monkeypatch):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from r1kit import prompt_attention

    monkeypatch.setattr(prompt_attention, "install", lambda: None)
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", sdpa_attention_forward)
    with pytest.raises(RuntimeError, match="0 of its 2 layers attended through r1kit.prompt_attention"):
        completion_logprobs_and_entropy(build("llama-untied"), grouped_batch(97), layout="shared")


def test_groups_stay_in_one_row_with_the_segment_index():
    batch = grouped_batch(97, groups=((5, (300, 300, 300)),))  # 904 positions: dense rows would be cut at 512
    layout = shared_prefix_layout(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                  segments=True)
    assert layout.input_ids.shape == (1, 4 + 900) and layout.attention_mask.shape == (1, 904)
    model = build("llama-untied")
    padded, _ = completion_logprobs_and_entropy(model, batch, layout="padded", with_entropy=False)
    shared, _ = score_completions(model, layout, batch.completion_mask, with_entropy=False)
    torch.testing.assert_close(shared, padded, atol=1e-5, rtol=1e-5)
