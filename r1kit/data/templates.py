"""System prompts and chat formatting: a dataset row becomes prompt token ids via the chat template."""

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


def system_prompt_text(name_or_text: str) -> str | None:
    """`none` -> no system turn; a known name -> its text; anything else is the literal prompt."""
    if name_or_text in ("", "none"):
        return None
    return SYSTEM_PROMPTS.get(name_or_text, name_or_text)


def build_messages(question: str, system_prompt: str = "none") -> list[dict]:
    system = system_prompt_text(system_prompt)
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}]


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Prompt token ids ending with the assistant turn's opening (add_generation_prompt=True)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                         "use a chat/instruct model or one whose tokenizer defines chat_template")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids
