"""Prompt templates: system prompts, the boxed instruction, Llama-3 and ChatML chat templates, plain text."""

import pytest

from r1kit.data.templates import (
    INSTRUCTIONS,
    SYSTEM_PROMPTS,
    build_messages,
    encode_prompt,
    render_plain,
    render_prompt,
)

# Llama-3-Instruct's and ChatML's (Qwen) chat templates, reduced to what a prompt needs.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(specials: list[str], template: str | None, bos: str | None = None):
    """A character-level tokenizer with the given special tokens; with `bos`, encoding adds it (like Llama-3)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(["<unk>", *specials, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token=bos,
                                   eos_token=specials[-1])
    fast.chat_template = template
    return fast


@pytest.fixture(scope="module")
def llama3():
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return make_tokenizer(specials, LLAMA3_TEMPLATE, bos="<|begin_of_text|>")


@pytest.fixture(scope="module")
def chatml():
    return make_tokenizer(["<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE)


def test_messages_with_system_prompt_and_boxed_instruction():
    messages = build_messages("What is 2+2?", "tiny_r1", "boxed")
    assert messages == [{"role": "system", "content": SYSTEM_PROMPTS["tiny_r1"]},
                        {"role": "user", "content": "What is 2+2?\n" + INSTRUCTIONS["boxed"]}]
    assert "<reasoning>" in SYSTEM_PROMPTS["tiny_r1"] and "<think>" in SYSTEM_PROMPTS["r1"]
    assert INSTRUCTIONS["boxed"] == "Please reason step by step, and put your final answer within \\boxed{}."
    assert build_messages("q", instruction="Answer in French.")[-1]["content"] == "q\nAnswer in French."


def test_llama3_template(llama3):
    ids = encode_prompt(llama3, build_messages("2+2?", "Be brief."))
    assert llama3.decode(ids) == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                                  "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
                                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids.count(llama3.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer


def test_chatml_template(chatml):
    ids = encode_prompt(chatml, build_messages("2+2?", "r1", "boxed"))
    assert chatml.decode(ids) == (f"<|im_start|>system\n{SYSTEM_PROMPTS['r1']}<|im_end|>\n"
                                  f"<|im_start|>user\n2+2?\n{INSTRUCTIONS['boxed']}<|im_end|>\n"
                                  "<|im_start|>assistant\n")
    assert ids[0] == chatml.convert_tokens_to_ids("<|im_start|>")


def test_no_chat_template_is_an_error_unless_plain_is_chosen():
    base = make_tokenizer(["<|begin_of_text|>", "<|end_of_text|>"], None, bos="<|begin_of_text|>")
    with pytest.raises(ValueError, match=r"has no chat template; .* set data.prompt_format=plain"):
        encode_prompt(base, build_messages("2+2?"))
    ids = encode_prompt(base, build_messages("2+2?", "Be brief."), prompt_format="plain")
    assert base.decode(ids) == "<|begin_of_text|>Be brief.\n\nUser: 2+2?\nAssistant:"  # base model: BOS added


def test_plain_format_and_bad_format(chatml):
    assert render_plain([{"role": "user", "content": "q"}]) == "User: q\nAssistant:"
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        render_plain([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match=r"prompt_format must be one of \['chat', 'plain'\], got 'jinja'"):
        render_prompt(chatml, build_messages("q"), "jinja")
