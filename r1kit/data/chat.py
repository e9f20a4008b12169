"""Chat datasets for SFT: column layouts -> messages -> token samples with completion-only labels -> packed rows.

Pure functions (no model, no config objects), so each step is tested on its own.

Layouts (``sft.format``; ``auto`` picks by the columns, in this order):

  ===================  ==========================================  ===========================================
  layout               columns of a row                            messages
  ===================  ==========================================  ===========================================
  messages             ``messages``: [{role, content}, ...]        as they are (TRL's conversational format)
  sharegpt             ``conversations``: [{from, value}, ...],    ``system`` (if non-empty) first, then each
  (Bespoke-Stratos,    optional ``system`` string                  turn: from human|user -> user, gpt|assistant
  OpenThoughts)                                                    -> assistant, system -> system; value -> content
  prompt_completion    ``prompt``, ``completion``: strings or      a string prompt is one user turn, a string
                       message lists; optional ``system``          completion one assistant turn
  ===================  ==========================================  ===========================================

A conversation is valid when its roles are system, user or assistant, a system turn comes only
first, user and assistant alternate from the first user turn on, and it ends with an assistant
turn. Anything else is a DataError naming the file and row.

Labels: every assistant turn is a target (its content and the end-of-turn token); system and user
turns and the template's role markers are context (label -100). A multi-turn conversation is one
sample when the chat template renders its history unchanged (the tokens up to turn k are a prefix
of the prompt of turn k+1); a template that rewrites history (R1's drops earlier <think> blocks;
the plain format writes no end-of-turn token) gives one sample per assistant turn, each with the
history exactly as the template renders it at inference, counted in ChatStats.split_conversations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1kit.data.sources import FILE_SUFFIXES, DataError, _read_file, _read_hub

IGNORE = -100  # label of a token that is context, not a target (torch's cross_entropy ignore_index)
FORMATS = ("auto", "messages", "sharegpt", "prompt_completion")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant")
# Bespoke-Stratos / OpenThoughts write their traces between these markers; R1's format is <think>..</think>
STRATOS_TO_THINK = (("<|begin_of_thought|>", "<think>"), ("<|end_of_thought|>", "</think>"),
                    ("<|begin_of_solution|>", ""), ("<|end_of_solution|>", ""))


@dataclass
class Sample:
    """One training sequence: token ids and their labels (the token id where it is a target, else -100)."""

    input_ids: list[int]
    labels: list[int]
    origin: str  # where it came from, for error messages: "file.jsonl row 12"

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class ChatStats:
    """What preparing a dataset did (logged by the SFT run)."""

    conversations: int = 0
    samples: int = 0
    split_conversations: int = 0  # multi-turn conversations cut into one sample per assistant turn
    truncated: int = 0  # samples cut at max_seq_length
    dropped: int = 0  # samples longer than max_seq_length left out
    layouts: dict = field(default_factory=dict)


# ---------------------------------------------------------------- layouts -> messages


def read_records(source: str, subset: str | None = None, split: str = "train") -> list[dict]:
    """Rows of a local .jsonl/.json/.parquet/.csv file, or of a hub dataset `owner/name` (datasets.load_dataset)."""
    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return _read_file(path)  # a missing file or another suffix: an error naming it
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _read_hub(source, subset, split)
    raise DataError(f"sft.source={source!r}: expected tiny_arith, gsm8k, a .jsonl/.parquet/.csv file, or a hub "
                    "dataset owner/name")


def detect_layout(columns: set[str], where: str) -> str:
    """The layout a row's columns say, checked in the order messages, sharegpt, prompt_completion."""
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "sharegpt"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    raise DataError(f"{where}: cannot tell the chat layout from the columns {sorted(columns)}; expected 'messages', "
                    "'conversations' (+ 'system'), or 'prompt' + 'completion' (or set sft.format)")


def to_messages(row: dict, layout: str, where: str) -> list[dict]:
    """The row as a validated list of {role, content} messages (see the module docstring)."""
    if layout == "auto":
        layout = detect_layout(set(row), where)
    if layout == "messages":
        messages = [_role_content(turn, where, i) for i, turn in enumerate(_column(row, "messages", list, where))]
    elif layout == "sharegpt":
        messages = _system(row, where) + [_from_value(turn, where, i)
                                          for i, turn in enumerate(_column(row, "conversations", list, where))]
    elif layout == "prompt_completion":
        prompt, completion = _column(row, "prompt", (str, list), where), _column(row, "completion", (str, list), where)
        messages = _system(row, where) + _as_turns(prompt, "user", where) + _as_turns(completion, "assistant", where)
    else:
        raise DataError(f"sft.format={layout!r} is not a layout; expected one of {list(FORMATS)}")
    check_conversation(messages, where)
    return messages


def _column(row: dict, name: str, types, where: str):
    if name not in row:
        raise DataError(f"{where}: no {name!r} column (columns: {sorted(row)})")
    if not isinstance(row[name], types):
        raise DataError(f"{where}: {name!r} must be {_type_names(types)}, got {type(row[name]).__name__}")
    return row[name]


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _system(row: dict, where: str) -> list[dict]:
    system = row.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise DataError(f"{where}: 'system' must be a string, got {type(system).__name__}")
    return [{"role": "system", "content": system}]


def _role_content(turn, where: str, i: int) -> dict:
    if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
        raise DataError(f"{where}: message {i} must be {{'role': str, 'content': str}}, got {str(turn)[:120]}")
    if turn["role"] not in ROLES:
        raise DataError(f"{where}: message {i} has unknown role {turn['role']!r}; expected one of {list(ROLES)}")
    return {"role": turn["role"], "content": turn["content"]}


def _from_value(turn, where: str, i: int) -> dict:
    if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
        raise DataError(f"{where}: conversations[{i}] must be {{'from': str, 'value': str}}, got {str(turn)[:120]}")
    role = SHAREGPT_ROLES.get(turn["from"].lower())
    if role is None:
        raise DataError(f"{where}: conversations[{i}] has unknown speaker 'from': {turn['from']!r}; expected one of "
                        f"{sorted(SHAREGPT_ROLES)}")
    return {"role": role, "content": turn["value"]}


def _as_turns(value, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [_role_content(turn, where, i) for i, turn in enumerate(value)]


def check_conversation(messages: list[dict], where: str) -> None:
    """Optional system first, then user/assistant alternating from a user turn, ending with an assistant turn."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not any(m["role"] == "assistant" for m in body):
        raise DataError(f"{where}: no assistant turn (roles: {[m['role'] for m in messages]}); SFT needs a target")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            index = i + len(messages) - len(body)
            raise DataError(f"{where}: roles out of order at message {index}: got {m['role']!r}, expected {expected!r} "
                            f"(roles: {[m['role'] for m in messages]}; a system turn may only come first, then user "
                            "and assistant alternate)")
    if body[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation ends with a {body[-1]['role']!r} turn; it must end with an "
                        "assistant turn (the last target)")


def stratos_to_think(messages: list[dict]) -> list[dict]:
    """Bespoke-Stratos / OpenThoughts markers in assistant turns rewritten as R1's <think> tags:
    <|begin_of_thought|>..<|end_of_thought|> -> <think>..</think>; the solution markers are removed."""
    out = []
    for m in messages:
        content = m["content"]
        if m["role"] == "assistant":
            for old, new in STRATOS_TO_THINK:
                content = content.replace(old, new)
        out.append({**m, "content": content})
    return out


# ---------------------------------------------------------------- messages -> token samples


def tokenize_conversation(messages: list[dict], encode_prompt: Callable[[list[dict]], list[int]],
                          encode_text: Callable[[str], list[int]], end_ids: list[int], origin: str) -> list[Sample]:
    """Token samples of one validated conversation; every assistant turn is a target.

    encode_prompt(history) gives the ids of the history rendered up to the opening of an assistant
    turn (the chat template with add_generation_prompt); the target is encode_text(content) + end_ids.
    Returns one sample, or one per assistant turn when the template rewrites history (module docstring).
    """
    samples: list[Sample] = []
    ids: list[int] = []
    labels: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        context = encode_prompt(messages[:i])
        if ids and context[:len(ids)] != ids:  # the template renders this history differently: new sample
            samples.append(Sample(ids, labels, origin))
            ids, labels = [], []
        target = encode_text(m["content"]) + list(end_ids)
        new_context = context[len(ids):]
        ids = ids + new_context + target
        labels = labels + [IGNORE] * len(new_context) + target
    samples.append(Sample(ids, labels, origin))
    return samples


def fit_length(samples: list[Sample], max_seq_length: int, overlong: str, stats: ChatStats) -> list[Sample]:
    """Samples longer than max_seq_length (0: no limit): an error naming the sample and the key
    (overlong=error), cut to their first max_seq_length tokens (truncate), or left out (drop)."""
    if not max_seq_length:
        return samples
    out = []
    for s in samples:
        if len(s) <= max_seq_length:
            out.append(s)
        elif overlong == "error":
            raise DataError(f"{s.origin}: {len(s)} tokens, longer than sft.max_seq_length={max_seq_length} (a sample "
                            "must fit one sequence, packed or not); raise sft.max_seq_length, or set "
                            "sft.overlong=truncate or drop to cut or leave out such samples")
        elif overlong == "truncate":
            stats.truncated += 1
            out.append(Sample(s.input_ids[:max_seq_length], s.labels[:max_seq_length], s.origin))
        elif overlong == "drop":
            stats.dropped += 1
        else:
            raise ValueError(f"sft.overlong must be error, truncate or drop, got {overlong!r}")
    if not any(label != IGNORE for s in out for label in s.labels[1:]):
        shortest = min(samples, key=len)
        raise DataError(f"no sample has a target token within sft.max_seq_length={max_seq_length} (sft.overlong="
                        f"{overlong}; shortest sample: {shortest.origin}, {len(shortest)} tokens)")
    return out


def shifted_targets(sample: Sample) -> list[int]:
    """Targets aligned with input positions: position t predicts token t+1 (-100 after the last token),
    computed per sample so that the last token of one packed sample never predicts the next one's first."""
    return sample.labels[1:] + [IGNORE]


def target_count(samples: list[Sample]) -> int:
    return sum(sum(1 for label in s.labels[1:] if label != IGNORE) for s in samples)


# ---------------------------------------------------------------- batches: padded or packed


def pad_batch(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """One sample per row, right-padded: input_ids, attention_mask and targets, each (N, T)."""
    width = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, :len(s)] = torch.tensor(s.input_ids, dtype=torch.long)
        targets[i, :len(s)] = torch.tensor(shifted_targets(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "targets": targets}


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total <= capacity: first-fit decreasing (ties: lower
    index first), bins in order of creation. Every length must be <= capacity (fit_length sees to it)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if lengths[i] > capacity:
            raise ValueError(f"a sample of {lengths[i]} tokens cannot be packed into {capacity}")
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def packed_batch(samples: list[Sample], bins: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Several samples per row: input_ids, position_ids and targets, each (R, L), L = the fullest bin.

    Position ids restart at 0 for every sample, and no attention_mask is passed: transformers (5.x,
    masking_utils.find_packed_sequence_indices) then builds a block-diagonal causal mask from the
    position ids, for sdpa and eager attention, and flash-attention reads them as sequence starts.
    The row's padding is one more segment (positions from 0, no targets) that attends only to itself.
    """
    width = max(sum(len(samples[i]) for i in b) for b in bins)
    input_ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    targets = torch.full((len(bins), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(bins), width), dtype=torch.long)
    for r, b in enumerate(bins):
        start = 0
        for i in b:
            s, end = samples[i], start + len(samples[i])
            input_ids[r, start:end] = torch.tensor(s.input_ids, dtype=torch.long)
            targets[r, start:end] = torch.tensor(shifted_targets(s), dtype=torch.long)
            position_ids[r, start:end] = torch.arange(len(s))
            start = end
        position_ids[r, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "position_ids": position_ids, "targets": targets}


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the target tokens.

    logits (N, T, V) any float dtype (computed in float32); targets (N, T) token ids, -100 where no
    target. Returns a scalar: the sum over targets (the caller divides by the step's target count).
    """
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target | prefix) at every position: logits (N, T, V), targets (N, T) -> (N, T) float32, 0 where -100."""
    safe = targets.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(targets == IGNORE, torch.zeros_like(logp), logp)
