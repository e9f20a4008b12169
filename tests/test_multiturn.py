"""Multi-turn rollouts with tools (r1kit.rollout.multiturn): token-in/token-out, masks, budgets, logprobs."""

import dataclasses

import pytest
import torch

from r1kit.batch import completion_logprobs, make_batch
from r1kit.data.templates import build_messages, encode_prompt
from r1kit.rollout.hf import HFEngine
from r1kit.rollout.multiturn import MultiTurnEngine, ToolMessages, tool_metrics
from r1kit.tools.calculator import calculator
from r1kit.tools.calls import ParsedCall
from r1kit.tools.registry import Toolbox, ToolResult, tool_from_function
from r1kit.types import Completion, SamplingParams

QUESTION = "Ana has 312 pens, gets 415. How many pens now?"
CALL = '<tool_call>calculator("312+415")</tool_call>'


def calc_box() -> Toolbox:
    return Toolbox({"calculator": tool_from_function(calculator, "test")})


def chatty(model, tok, prompt: list[int], monkeypatch):
    """Make the random small model take turns: its 8 likeliest first tokens end a turn (the generation
    config's EOS list), and every turn calls the calculator. So rollouts have several turns with the
    template's tool message inserted between them, without training a model to use the tool."""
    with torch.no_grad():
        likely = model(torch.tensor([prompt])).logits[0, -1].topk(8).indices.tolist()
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tok.eos_token_id, *likely])
    monkeypatch.setattr("r1kit.rollout.multiturn.parse_calls",
                        lambda text, call_format: [ParsedCall("calculator", ("312+415",))])


def test_tool_message_tokens_come_from_the_template(tiny_tokenizer):
    """The inserted text is the template's tool message and the next assistant opening, and nothing else."""
    messages = ToolMessages(tiny_tokenizer)
    assert messages.text([ToolResult("727")]) == "<|tool|>727<|end|><|assistant|>"
    assert messages.ids([ToolResult("7")]) == tiny_tokenizer("<|tool|>7<|end|><|assistant|>",
                                                             add_special_tokens=False).input_ids


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_multiturn_engine_logprobs_equal_trainer_logprobs(small_model, tiny_tokenizer, temperature, monkeypatch):
    """Rollouts of several turns: the trained sequence is sampled + inserted tokens, the mask marks the policy's
    own, and the engine's logprobs of those equal the trainer's to 1e-5 (as for one turn, tests/test_rollout.py)."""
    rows = [{"prompt_ids": encode_prompt(tiny_tokenizer, build_messages(q))} for q in (QUESTION, "Bo has 1 cup.")]
    chatty(small_model, tiny_tokenizer, rows[0]["prompt_ids"], monkeypatch)
    inserted = ToolMessages(tiny_tokenizer).ids([ToolResult("727")])
    engine = MultiTurnEngine(HFEngine(small_model, tiny_tokenizer), tiny_tokenizer, calc_box(), "plain",
                             max_turns=4, max_tool_calls=3)
    out = engine.generate([r["prompt_ids"] for r in rows], 4,
                          SamplingParams(max_new_tokens=80, temperature=temperature, seed=3))
    assert sum(c.turns > 2 for c in out) >= 2, [c.turns for c in out]
    for c in out:
        assert len(c.token_ids) == len(c.logprobs) == len(c.policy_mask) <= 80
        assert all(lp == 0.0 for lp, m in zip(c.logprobs, c.policy_mask) if m == 0)
        assert c.tool_errors == 0 and c.tool_calls in (c.turns - 1, c.turns)  # the last turn's calls may go unanswered
        first = c.policy_mask.index(0) if 0 in c.policy_mask else len(c.token_ids)
        if first < len(c.token_ids):  # the tool's answer, inserted as tokens right after the first turn
            assert c.token_ids[first:first + len(inserted)] == inserted
            assert c.policy_mask[first:first + len(inserted)] == [0] * len(inserted)

    batch = make_batch(out, rows, torch.zeros(len(out)), tiny_tokenizer.pad_token_id)
    assert batch.completion_mask.sum().item() == sum(sum(c.policy_mask) for c in out)  # inserted: not trained
    assert batch.real_tokens.sum().item() == sum(len(c.token_ids) for c in out)  # ... but attended to
    assert batch.length_metrics()["completion/max_length"] == max(sum(c.policy_mask) for c in out)
    with torch.no_grad():
        trainer = completion_logprobs(small_model, batch, temperature)
    mask = batch.completion_mask.bool()
    gap = (trainer - batch.engine_logprobs)[mask].abs().max().item()
    assert gap <= 1e-5, gap
    assert (trainer[~mask] == 0).all()  # inserted tokens and padding are not scored
    assert batch.logprob_gap(trainer, trainer)["tokens"] == mask.sum().item()


def test_every_layout_scores_multiturn_alike(small_model, tiny_tokenizer):
    """padded, packed and shared-prompt forwards attend to inserted tokens and score only the policy's."""
    from r1kit.batch import completion_logprobs_and_entropy, full_logits_logprobs_and_entropy

    prompt = encode_prompt(tiny_tokenizer, build_messages(QUESTION))
    first = tiny_tokenizer(CALL, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    inserted = ToolMessages(tiny_tokenizer).ids([ToolResult("727")])
    second = tiny_tokenizer("<answer>727</answer>", add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    done = Completion(0, first + inserted + second, "", "stop", [0.0] * (len(first) + len(inserted) + len(second)),
                      policy_mask=[1] * len(first) + [0] * len(inserted) + [1] * len(second))
    single = Completion(0, second, "", "stop", [0.0] * len(second))
    batch = make_batch([done, single, done], [{"prompt_ids": prompt}], torch.zeros(3), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        reference = full_logits_logprobs_and_entropy(small_model, batch)[0]
        for layout in ("padded", "packed", "shared"):
            got = completion_logprobs_and_entropy(small_model, batch, with_entropy=False, layout=layout)[0]
            torch.testing.assert_close(got, reference, atol=1e-5, rtol=0)
    # the third token of the answer is scored given the tool message before it: attention reached it
    ids = torch.tensor([prompt + first + inserted + second])
    with torch.no_grad():
        logits = small_model(ids).logits[0].log_softmax(-1)
    pos = len(prompt) + len(first) + len(inserted) + 2
    assert reference[0, len(first) + len(inserted) + 2].item() == pytest.approx(logits[pos - 1, ids[0, pos]].item(), abs=1e-5)


class ScriptedEngine:
    """An Engine that answers each call with the next scripted turn (text + EOS), for the loop's bookkeeping."""

    def __init__(self, tok, turns: list[str], finish: str = "stop"):
        self.tok, self.turns, self.calls, self.finish = tok, list(turns), [], finish

    def generate(self, prompts, n, sampling):
        self.calls.append((prompts, n, sampling))
        text = self.turns.pop(0)
        ids = self.tok(text, add_special_tokens=False).input_ids + ([self.tok.eos_token_id] if self.finish == "stop" else [])
        return [Completion(i, ids, text, self.finish, [-0.5] * len(ids)) for i in range(len(prompts)) for _ in range(n)]

    def update_weights(self, model):
        pass

    def close(self):
        pass


def scripted(tok, turns, **kw) -> MultiTurnEngine:
    kw = {"max_turns": 5, "max_tool_calls": 5, **kw}
    return MultiTurnEngine(ScriptedEngine(tok, turns), tok, calc_box(), "plain", **kw)


@pytest.mark.parametrize("turn, message", [
    ('<tool_call>calculator("1+")</tool_call>', "error: calculator raised ValueError: not an arithmetic expression"),
    ('<tool_call>search("x")</tool_call>', "error: unknown tool 'search'"),
    ('<tool_call>calculator(1, 2)</tool_call>', "error: bad arguments for calculator"),
    ('<tool_call>calculator(x)</tool_call>', "error: tool call arguments must be literals"),
    ('<tool_call>calculator("1"', "error: <tool_call> without its closing </tool_call>"),
])
def test_a_failed_call_is_an_error_message_the_policy_reads(tiny_tokenizer, turn, message):
    engine = scripted(tiny_tokenizer, [turn, "<answer>1</answer>"])
    (c,) = engine.generate([[5, 6]], 1, SamplingParams(max_new_tokens=200, seed=0))
    assert c.finish_reason == "stop" and c.turns == 2 and c.tool_calls == 1 and c.tool_errors == 1
    assert message in c.text
    assert tool_metrics([c]) == {"tools/calls": 1.0, "tools/errors": 1.0, "tools/call_share": 1.0, "tools/turns": 2.0}


def test_turn_seeds_and_budget(tiny_tokenizer):
    """Turn t > 1 samples from its own stream per completion, with the tokens left of the whole budget."""
    engine = scripted(tiny_tokenizer, [CALL, "<answer>727</answer>"])
    out = engine.generate([[5, 6], [7]], 2, SamplingParams(max_new_tokens=100, seed=11))
    (_, n1, s1), (prompts2, n2, s2) = engine.engine.calls
    assert n1 == 2 and s1.prompt_seeds is None and n2 == 1
    assert len(set(s2.prompt_seeds)) == 4  # four completions, four streams
    used = len(out[0].token_ids) - len(tiny_tokenizer("<answer>727</answer>").input_ids) - 1
    assert s2.max_new_tokens == 100 - used and prompts2[0][:2] == [5, 6]
    assert all(c.text.endswith("<|tool|>727<answer>727</answer>") for c in out)


@pytest.mark.parametrize("limits, budget, turns, finish", [
    ({"max_turns": 1}, 200, 1, "length"),  # called a tool with no turn left to read its answer
    ({"max_tool_calls": 1}, 200, 2, "length"),  # second call over the limit
    ({}, 55, 1, "length"),  # the tool message would leave no room
    ({}, 200, 3, "stop"),
])
def test_limits_cut_and_flag_truncated(tiny_tokenizer, limits, budget, turns, finish):
    engine = scripted(tiny_tokenizer, [CALL, CALL, "<answer>727</answer>"], **limits)
    (c,) = engine.generate([[5]], 1, SamplingParams(max_new_tokens=budget, temperature=0.0))
    assert (c.turns, c.finish_reason) == (turns, finish)
    assert len(c.token_ids) <= budget


def test_a_turn_cut_by_the_budget_is_truncated(tiny_tokenizer):
    engine = MultiTurnEngine(ScriptedEngine(tiny_tokenizer, [CALL], finish="length"), tiny_tokenizer, calc_box(),
                             "plain", max_turns=3, max_tool_calls=3)
    (c,) = engine.generate([[5]], 1, SamplingParams(max_new_tokens=10, temperature=0.0))
    assert c.finish_reason == "length" and len(c.token_ids) == 10 and c.tool_calls == 0


def test_single_turn_answers_are_unchanged(small_model, tiny_tokenizer):
    """Without a tool call, a multi-turn engine samples exactly what the plain engine samples."""
    hf = HFEngine(small_model, tiny_tokenizer)
    prompts = [encode_prompt(tiny_tokenizer, build_messages(QUESTION))]
    sampling = SamplingParams(max_new_tokens=12, seed=4)
    plain = hf.generate(prompts, 3, sampling)
    multi = MultiTurnEngine(hf, tiny_tokenizer, calc_box(), "plain", 3, 3).generate(prompts, 3, sampling)
    for a, b in zip(plain, multi):
        assert (a.token_ids, a.logprobs, a.finish_reason) == (b.token_ids, b.logprobs, b.finish_reason)
        assert b.policy_mask == [1] * len(b.token_ids)
    assert dataclasses.replace(multi[0], policy_mask=None, logprobs=[]).turns == 1


def test_grpo_steps_with_tools(small_model_dir, tmp_path, monkeypatch):
    """The trainer end to end with multi-turn rollouts: tool metrics, a logprob gap at float rounding on the policy's
    tokens, samples that show the inserted tool messages, evaluation taking the same turns."""
    import json
    import shutil

    from test_trainer import cfg_for

    from r1kit.models import build_tiny_tokenizer
    from r1kit.trainer import train

    model_dir = tmp_path / "model"
    shutil.copytree(small_model_dir, model_dir)
    tok = build_tiny_tokenizer()
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [tok.eos_token_id, *tok.convert_tokens_to_ids(list("aeiou0123456789 "))]  # short turns
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    monkeypatch.setattr("r1kit.rollout.multiturn.parse_calls",
                        lambda text, call_format: [ParsedCall("calculator", ("312+415",))])
    summary = train(cfg_for(model_dir, tmp_path, "train.max_steps=2", "tools=[calculator]", "eval.after=false",
                            "rollout.tool_call_format=plain", "rollout.max_completion_length=40", "rollout.max_turns=3",
                            "eval.max_new_tokens=40", "train.save_every=0"))
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["tools/calls"] > 0 and lines[0]["tools/turns"] > 1 and lines[0]["tools/errors"] == 0
    assert lines[0]["engine/logprob_gap_max"] < 1e-4
    sample = json.loads((tmp_path / "t" / "samples.jsonl").read_text().splitlines()[0])
    assert any("<|tool|>727" in c for c in sample["completions"])
    assert max(sample["turns"]) > 1 and max(sample["tool_calls"]) > 0  # samples.jsonl shows the turns
    assert summary["tool_share_before"] == 1.0  # every greedy answer called (the patched parser sees a call in every turn)
