"""GRPO really learns: a short run of the tiny recipe raises held-out greedy accuracy (slow: run with -m slow)."""

import json
from pathlib import Path

import pytest

from r1kit.recipe import load_recipe
from r1kit.trainer import train

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny" / "grpo.yaml"


@pytest.mark.slow
def test_grpo_raises_heldout_accuracy(tmp_path):
    cfg = load_recipe(RECIPE, [f"output_dir={tmp_path}", "train.max_steps=40", "data.eval_size=200",
                                                 "log.progress=false", "train.save_every=0"])
    summary = train(cfg)
    assert summary["accuracy_after"] >= summary["accuracy_before"] + 0.10, summary
    # "thinking pays, responses grow": the held-out greedy answers get longer as the policy switches to working
    # (measured: 19.9 -> 42 tokens; the greedy answers are deterministic, unlike 5-step windows of samples)
    assert summary["mean_length_after"] > 1.5 * summary["mean_length_before"], summary
    assert summary["reasoning_share_after"] > summary["reasoning_share_before"] + 0.3, summary
    lengths = [json.loads(x)["completion/mean_length"] for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(lengths[-5:]) / 5 > 1.3 * sum(lengths[:5]) / 5  # sampled completions grow too (measured 1.50x)
