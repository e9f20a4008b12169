"""The tiny tool world (docs/tools.md): the shipped cold start builtin:tiny-tool-sft, and GRPO rewarded for
correctness only making it call the calculator (slow: run with -m slow)."""

from pathlib import Path

import pytest
import torch

from r1kit.recipe import load_recipe
from r1kit.data import tasks
from r1kit.data.sources import load_rows
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.models import BUILTIN_TOOL_SFT, load_model, load_tokenizer, resolve_model_path
from r1kit.rollout.multiturn import ToolMessages
from r1kit.tools.calculator import calculator
from r1kit.tools.calls import parse_calls
from r1kit.tools.registry import ToolResult
from r1kit.trainer import train

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny" / "tool-grpo.yaml"


def test_the_shipped_tool_cold_start_loads_and_speaks_the_plain_tool_format():
    cfg = load_recipe(RECIPE, ["log.progress=false"])
    assert cfg.model.name_or_path == BUILTIN_TOOL_SFT
    assert (Path(resolve_model_path(BUILTIN_TOOL_SFT)) / "model.safetensors").stat().st_size < 12_000_000
    tok = load_tokenizer(BUILTIN_TOOL_SFT)
    row = load_rows(cfg.data, "heldout", size=1)[0]
    call, answer = tasks.tool_turns(row)
    # the char vocabulary spells the call, its arguments and the answer without an unknown token
    for text in (call, answer, row["question"]):
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids and tok.decode(ids) == text, text
    ((parsed,),) = [parse_calls(call, "plain")]
    assert parsed.name == "calculator" and calculator(*parsed.args) == row["answer"]
    # the template inserts the tool's answer as its own turn and reopens the assistant's
    inserted = ToolMessages(tok).text([ToolResult(row["answer"])])
    assert row["answer"] in inserted and inserted.endswith("<|assistant|>")
    model = load_model(cfg.model, tok)
    prompt = encode_prompt(tok, build_messages(row["question"], cfg.data.system_prompt))
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    assert logits.shape == (len(tok),) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_grpo_makes_the_tool_pay(tmp_path):
    """A shorter run of recipes/tiny/tool-grpo.yaml (the full one: benchmarks/tool_world.py)."""
    cfg = load_recipe(RECIPE, [f"output_dir={tmp_path}", "train.max_steps=12", "data.eval_size=100",
                               "eval.every=0", "log.progress=false", "train.save_every=0"])
    summary = train(cfg)
    # measured (2 shared cores, ~3 minutes): accuracy 8% -> 93%, tool share 10% -> 100%; the target is +30
    assert summary["accuracy_after"] >= summary["accuracy_before"] + 0.30, summary
    assert summary["tool_share_after"] >= summary["tool_share_before"] + 0.50, summary
