"""System prompts, instructions and prompt formatting: a question becomes prompt token ids.

Three knobs, all in `data` (recipe) and on `r1kit eval`:
  system_prompt  none | r1 (``<think>/<answer>``, DeepSeek-R1-Zero) | tiny_r1 (``<reasoning>/<answer>``)
                 | the literal text of a system prompt
  instruction    none | boxed (the "put your final answer within \\boxed{}" line that the R1 and
                 Qwen2.5-Math evaluations append to each problem) | literal text appended to the question
  prompt_format  chat: the tokenizer's own chat template (Llama-3, ChatML, ... whatever the model has);
                 plain: R1-Zero's plain-text conversation ``[system]\\n\\nUser: q\\nAssistant:``, for base
                 models without a chat template. Chat is the default, and a tokenizer without a template is
                 an error rather than a silent switch to plain text: the two give different numbers.
"""

from __future__ import annotations

SYSTEM_PROMPTS = {
    # DeepSeek-R1-Zero's instruction, with its <think>/<answer> protocol.
    "r1": ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
           "The assistant first thinks about the reasoning process in the mind and then provides the user with "
           "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
           "</answer> tags, respectively, i.e., <think> reasoning process here </think> "
           "<answer> answer here </answer>."),
    # The Tiny-R1 / GSM8K tutorial style.
    "tiny_r1": ("Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"),
}

INSTRUCTIONS = {
    # DeepSeek-R1's and Qwen2.5-Math's recommended evaluation instruction for math problems.
    "boxed": "Please reason step by step, and put your final answer within \\boxed{}.",
}

PROMPT_FORMATS = ("chat", "plain")


def system_prompt_text(name_or_text: str) -> str | None:
    """`none` -> no system turn; a known name -> its text; anything else is the literal prompt."""
    if name_or_text in ("", "none"):
        return None
    return SYSTEM_PROMPTS.get(name_or_text, name_or_text)


def instruction_text(name_or_text: str) -> str | None:
    """`none` -> nothing appended; `boxed` -> the boxed-answer instruction; anything else is literal."""
    if name_or_text in ("", "none"):
        return None
    return INSTRUCTIONS.get(name_or_text, name_or_text)


def build_messages(question: str, system_prompt: str = "none", instruction: str = "none") -> list[dict]:
    """Chat messages for one question: an optional system turn, then the user turn."""
    system, extra = system_prompt_text(system_prompt), instruction_text(instruction)
    messages = [{"role": "system", "content": system}] if system else []
    content = f"{question}\n{extra}" if extra else question
    return messages + [{"role": "user", "content": content}]


def render_plain(messages: list[dict]) -> str:
    """R1-Zero's plain-text conversation: ``system\\n\\nUser: ...\\nAssistant:`` (the model continues)."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"] + "\n\n")
        elif m["role"] == "user":
            parts.append(f"User: {m['content']}\n")
        elif m["role"] == "assistant":
            parts.append(f"Assistant: {m['content']}\n")
        else:
            raise ValueError(f"plain prompt format: unknown role {m['role']!r} (expected system, user, assistant)")
    return "".join(parts) + "Assistant:"


def render_prompt(tokenizer, messages: list[dict], prompt_format: str = "chat", tools: list[dict] | None = None) -> str:
    """The prompt text ending where the assistant's answer starts; `tools` (JSON schemas) go to the chat
    template, which writes them into the prompt (Qwen2.5: its system turn)."""
    if prompt_format == "plain":
        return render_plain(messages)
    if prompt_format != "chat":
        raise ValueError(f"data.prompt_format must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use a "
                         "chat/instruct model, or set data.prompt_format=plain (r1kit eval: --prompt-format plain) "
                         "for the plain-text 'User: ...\\nAssistant:' format")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, tools=tools or None)


def encode_prompt(tokenizer, messages: list[dict], prompt_format: str = "chat", tools: list[dict] | None = None) -> list[int]:
    """Prompt token ids ending with the assistant turn's opening.

    The chat template writes its own BOS, so its text is encoded without special tokens; plain text
    gets the tokenizer's usual special tokens (a base model's BOS).
    """
    text = render_prompt(tokenizer, messages, prompt_format, tools)
    return tokenizer(text, add_special_tokens=prompt_format == "plain").input_ids


def prompt_ids(tokenizer, question: str, data_cfg) -> list[int]:
    """Token ids of one question's prompt, styled by a DataCfg (system_prompt, instruction, prompt_format)."""
    messages = build_messages(question, data_cfg.system_prompt, data_cfg.instruction)
    return encode_prompt(tokenizer, messages, data_cfg.prompt_format)
