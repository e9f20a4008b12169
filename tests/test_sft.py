"""Cold-start SFT: completion-only labels, example building, and a short run that lowers the loss."""

import json

import pytest

from r1kit.config import load_recipe
from r1kit.data.sources import DataError
from r1kit.sft import build_examples, collate, run_sft


def test_collate_masks_prompt_and_padding():
    batch = collate([([1, 2], [3, 4]), ([5], [6])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_tiny_examples_mix_styles(tiny_tokenizer):
    cfg = load_recipe(None, ["data.train_size=400", "sft.direct_fraction=0.7"])
    examples = build_examples(cfg, tiny_tokenizer)
    think, close = tiny_tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    direct = sum(c[0] == think and c[1] == close for _, c in examples) / len(examples)
    assert 0.62 < direct < 0.78
    assert all(c[-1] == tiny_tokenizer.eos_token_id for _, c in examples)


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
