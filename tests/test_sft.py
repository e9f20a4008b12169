"""Cold-start SFT: completion-only labels, example building, and a short run that lowers the loss."""

import json

import pytest

from r1kit.config import load_recipe
from r1kit.data.sources import DataError, load_rows
from r1kit.sft import build_examples, collate, run_sft


def test_collate_masks_prompt_and_padding():
    batch = collate([([1, 2], [3, 4]), ([5], [6])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_tiny_examples_mix_styles(tiny_tokenizer):
    from r1kit.sft import direct_share

    cfg = load_recipe(None, ["data.train_size=2000", "sft.direct_fraction=0.8", "sft.large_from=15",
                             "sft.large_direct_fraction=0.1"])
    examples = build_examples(cfg, tiny_tokenizer)
    rows = load_rows(cfg.data, "train", size=2000)
    think, close = tiny_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    is_direct = [c[0] == think and c[1] == close for _, c in examples]
    large = [direct_share(r, cfg.sft) == 0.1 for r in rows]
    assert 0.25 < sum(large) / len(large) < 0.35  # first number in 15..20 of 1..20
    small_direct = sum(d for d, big in zip(is_direct, large) if not big) / (len(large) - sum(large))
    large_direct = sum(d for d, big in zip(is_direct, large) if big) / sum(large)
    assert 0.75 < small_direct < 0.85 and 0.05 < large_direct < 0.15
    assert all(c[-1] == tiny_tokenizer.eos_token_id for _, c in examples)
    assert direct_share({"working": "7-2=5."}, cfg.sft) == 0.8 and direct_share({"working": "15+1=16."}, cfg.sft) == 0.1


def test_jsonl_sources(tmp_path, tiny_tokenizer):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "completion": "<answer>2</answer>"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                               {"role": "assistant", "content": "<answer>4</answer>"}]}) + "\n")
    examples = build_examples(load_recipe(None, [f"sft.source={path}"]), tiny_tokenizer)
    assert tiny_tokenizer.decode(examples[1][1]) == "<answer>4</answer><|end|>"
    path.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match="sft.jsonl:1: expected 'messages' or 'prompt' \\+ 'completion'"):
        build_examples(load_recipe(None, [f"sft.source={path}"]), tiny_tokenizer)


def test_short_sft_run_lowers_loss(small_model_dir, tmp_path):
    cfg = load_recipe(None, [f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=s",
                             "sft.steps=30", "sft.batch_size=16", "sft.warmup_steps=5", "sft.eval_every=0",
                             "data.train_size=500", "data.eval_size=4", "log.progress=false"])
    summary = run_sft(cfg)
    losses = [json.loads(x)["train/loss"] for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert (tmp_path / "s" / "final" / "model.safetensors").exists()
    assert {"forced_direct_accuracy", "forced_working_accuracy", "greedy_accuracy"} <= set(summary)


def test_sft_on_gsm8k_traces(small_model_dir, tmp_path, tiny_tokenizer):
    cfg = load_recipe(None, [f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=g",
                             "sft.source=gsm8k", "data.source=gsm8k", "data.eval_split=test", "data.eval_size=2",
                             "data.system_prompt=tiny_r1", "data.answer_tag_style=reasoning", "sft.steps=2",
                             "sft.batch_size=2", "sft.warmup_steps=0", "sft.eval_every=0", "eval.max_new_tokens=4",
                             "log.progress=false"])
    examples = build_examples(cfg, tiny_tokenizer)
    assert len(examples) == 7473
    completion = tiny_tokenizer.decode(examples[0][1])
    assert completion.startswith("<reasoning>\nNatalia sold 48/2 = 24 clips") and completion.endswith(
        "</reasoning>\n<answer>\n72\n</answer><|end|>")
    assert tiny_tokenizer.decode(examples[0][0]).startswith("<|system|>Respond in the following format")
    summary = run_sft(cfg)
    assert summary["steps"] == 2 and "greedy_accuracy" in summary
