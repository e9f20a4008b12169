"""Multi-turn rollouts with tools, token-in / token-out, around any Engine.

One completion is a conversation the policy continues until it answers::

    policy turn (sampled)  ->  tool message (inserted)  ->  policy turn (sampled)  ->  ...  ->  answer

Each turn is one `generate` call of the wrapped engine on the prompt plus every token so far, so the
HF engine, and later vLLM, run it unchanged. The trained sequence is exactly the tokens the policy
sampled plus the tokens r1kit inserted; nothing is ever re-tokenized (re-tokenizing a conversation
changes the tokens the policy sampled, and so the logprobs being trained). Inserted tokens are the
chat template's tool message: the template renders a stand-in conversation with and without the tool
messages, and only the text between the end of the assistant turn and the next assistant opening is
tokenized (ToolMessages). Completion.policy_mask marks the policy's tokens (1) and the inserted ones
(0, logprob 0.0); only the former are scored, trained on and counted (r1kit.batch).

A rollout ends when a turn calls no tool (finish "stop", or "length" when it ran out of tokens), or
cut short, flagged truncated (finish "length"): at rollout.max_completion_length tokens in all (sampled
and inserted), or when it calls a tool after max_turns turns or max_tool_calls calls.
Turn 1 samples exactly what a single-turn rollout samples; turn t > 1 of a completion draws from a
stream of its own, a hash of (its prompt's seed, its sample index, t), so results do not depend on
which rollouts are still running nor on the process layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from r1kit.rollout.sampling import row_seed
from r1kit.tools.calls import parse_calls
from r1kit.tools.registry import Toolbox, ToolResult
from r1kit.types import Completion, SamplingParams

STAND_IN = "\x00r1kit-turn\x00"  # the assistant turn of the stand-in conversation (never in real text)


class ToolMessages:
    """Token ids of the tool messages that answer one turn, as the chat template writes them.

    The template renders [user, assistant(stand-in)] and the same plus the tool messages with the
    next assistant opening; what follows the assistant's end-of-turn text (the EOS the policy sampled)
    is the inserted text. Checked once at construction: a template that cannot render a tool message
    is one error line.
    """

    def __init__(self, tokenizer, model_name: str = "the model"):
        self.tokenizer = tokenizer
        self.end_text = tokenizer.eos_token
        try:
            self.text([ToolResult("0")])
        except Exception as e:  # jinja's and our own errors alike: the template cannot do this
            raise ValueError(f"{model_name}: its chat template cannot insert a tool message after an assistant "
                             f"turn ({type(e).__name__}: {e})") from None

    def text(self, results: list[ToolResult]) -> str:
        base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": STAND_IN}]
        tools = [{"role": "tool", "content": r.content} for r in results]
        before = self.tokenizer.apply_chat_template(base, tokenize=False)
        after = self.tokenizer.apply_chat_template(base + tools, tokenize=False, add_generation_prompt=True)
        end = before.find(self.end_text, before.index(STAND_IN) + len(STAND_IN))
        if end < 0:
            raise ValueError(f"the assistant turn does not end with the EOS token {self.end_text!r}")
        cut = end + len(self.end_text)
        if after[:cut] != before[:cut]:
            raise ValueError("adding a tool message changes how the assistant turn is rendered")
        return after[cut:]

    def ids(self, results: list[ToolResult]) -> list[int]:
        return self.tokenizer(self.text(results), add_special_tokens=False).input_ids


@dataclass
class Rollout:
    prompt_index: int
    sample: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    policy_mask: list[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    finish: str = "stop"

    def add(self, tokens: list[int], logprobs: list[float], policy: bool) -> None:
        self.tokens += tokens
        self.logprobs += logprobs if policy else [0.0] * len(tokens)
        self.policy_mask += [int(policy)] * len(tokens)


class MultiTurnEngine:
    """An Engine whose completions may span several turns with tool calls (see the module docstring)."""

    def __init__(self, engine, tokenizer, toolbox: Toolbox, call_format: str, max_turns: int, max_tool_calls: int,
                 model_name: str = "the model"):
        self.engine = engine
        self.tokenizer = tokenizer
        self.toolbox = toolbox
        self.call_format = call_format
        self.max_turns = max_turns
        self.max_tool_calls = max_tool_calls
        self.messages = ToolMessages(tokenizer, model_name)

    def update_weights(self, model) -> None:
        self.engine.update_weights(model)

    def close(self) -> None:
        self.engine.close()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        if sampling.seed is None and sampling.temperature > 0:  # every turn needs a seed to derive from
            sampling = dataclasses.replace(sampling, seed=int(torch.randint(2**62, ()).item()))
        budget = sampling.max_new_tokens
        rollouts = [Rollout(i, j) for i in range(len(prompts)) for j in range(n)]
        pending = list(zip(rollouts, self.engine.generate(prompts, n, sampling)))
        turn = 1
        while pending:
            going = [r for r, c in pending if self._absorb(r, c, budget)]
            if not going:
                break
            turn += 1
            seeds = None if sampling.temperature == 0 else [
                row_seed(row_seed(sampling.prompt_seed(r.prompt_index), r.sample), turn) for r in going]
            room = max(budget - len(r.tokens) for r in going)
            step = dataclasses.replace(sampling, max_new_tokens=room, prompt_offset=0, prompt_seeds=seeds)
            pending = list(zip(going, self.engine.generate([prompts[r.prompt_index] + r.tokens for r in going], 1, step)))
        return [self._completion(r) for r in rollouts]

    def _absorb(self, r: Rollout, turn: Completion, budget: int) -> bool:
        """Append one policy turn (and the answers to its tool calls); whether the rollout goes on."""
        room = budget - len(r.tokens)
        r.add(turn.token_ids[:room], turn.logprobs[:room], policy=True)
        r.turns += 1
        if turn.finish_reason == "length" or len(turn.token_ids) > room:
            r.finish = "length"
            return False
        text = self.tokenizer.decode(turn.token_ids, skip_special_tokens=True)
        calls = parse_calls(text, self.call_format)
        if not calls:
            r.finish = "stop"
            return False
        if r.turns >= self.max_turns or r.tool_calls >= self.max_tool_calls:
            r.finish = "length"  # cut before it could read the answer: truncated
            return False
        results = []
        for call in calls:
            if call.error is not None:
                result = ToolResult(call.error, True)
            elif r.tool_calls >= self.max_tool_calls:
                result = ToolResult(f"error: the limit of {self.max_tool_calls} tool calls is reached", True)
            else:
                result = self.toolbox.call(call.name, call.args, call.kwargs)
            r.tool_calls += 1
            r.tool_errors += result.error
            results.append(result)
        inserted = self.messages.ids(results)
        if len(r.tokens) + len(inserted) >= budget:  # no room left for the policy to read and answer
            r.finish = "length"
            return False
        r.add(inserted, [], policy=False)
        return True

    def _completion(self, r: Rollout) -> Completion:
        return Completion(prompt_index=r.prompt_index, token_ids=r.tokens,
                          text=self.tokenizer.decode(r.tokens, skip_special_tokens=True), finish_reason=r.finish,
                          logprobs=r.logprobs, policy_mask=r.policy_mask, turns=r.turns, tool_calls=r.tool_calls,
                          tool_errors=r.tool_errors)


def tool_metrics(completions: list[Completion]) -> dict:
    """tools/calls and tools/errors per completion, the share of completions that call a tool, turns per completion."""
    n = max(len(completions), 1)
    return {"tools/calls": sum(c.tool_calls for c in completions) / n,
            "tools/errors": sum(c.tool_errors for c in completions) / n,
            "tools/call_share": sum(c.tool_calls > 0 for c in completions) / n,
            "tools/turns": sum(c.turns for c in completions) / n}
