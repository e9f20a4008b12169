"""The shipped cold start (builtin:tiny-sft) sits where GRPO has something to discover:
step-by-step working is strong, direct answers are weak, and greedy decoding mostly answers directly."""

import pytest

from r1kit.recipe import load_recipe
from r1kit.data.sources import load_rows
from r1kit.models import load_model, load_tokenizer
from r1kit.sft import sft_eval


@pytest.fixture(scope="module")
def shipped_metrics():
    cfg = load_recipe(None, ["data.eval_size=200"])
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = load_model(cfg.model, tokenizer)
    rows = load_rows(cfg.data, "heldout", size=200)
    return sft_eval(cfg, model, tokenizer, rows)


def test_greedy_start_leaves_headroom(shipped_metrics):
    assert 0.20 <= shipped_metrics["eval/greedy_accuracy"] <= 0.50


def test_working_is_strong_and_direct_is_weak(shipped_metrics):
    assert shipped_metrics["eval/forced_working_accuracy"] >= 0.75
    assert shipped_metrics["eval/forced_direct_accuracy"] <= shipped_metrics["eval/forced_working_accuracy"] - 0.4
