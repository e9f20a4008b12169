"""Bad input through the command line: each case is one clear line on stderr and an exit code, never a traceback
(r1kit.cli.main's table of one-line errors); R1KIT_TRACEBACK=1 shows the traceback for a bug report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1kit.cli import main

ROOT = Path(__file__).parent.parent


def one_line(capsys) -> str:
    """The command's stderr, which must be exactly one line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture()
def files(tmp_path, monkeypatch):
    """Bad recipes and user modules on disk; the cwd is tmp_path, so `badimport.fn` finds ./badimport.py."""
    (tmp_path / "dup_top.yaml").write_text("train:\n  max_steps: 1\nseed: 3\ntrain:\n  max_steps: 2\n")
    (tmp_path / "dup_nested.yaml").write_text("train:\n  max_steps: 1\n  learning_rate: 1e-5\n  max_steps: 3\n")
    (tmp_path / "broken.yaml").write_text("train:\n  max_steps: [1, 2\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "badimport.py").write_text("import os\nraise RuntimeError('no GPU here')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (arguments, exit code, words the one line must hold); {d} is the files fixture's directory
CASES = [
    (["train", "train.max_steps=[1"], 2, "override 'train.max_steps=[1': the value is not valid YAML"),
    (["train", "rewards=[{name: format, name: accuracy}]"], 2, "key 'name' appears twice"),
    (["train", "{d}/dup_top.yaml"], 2, "dup_top.yaml': key 'train' appears twice (line 1 and line 4); keep one"),
    (["train", "{d}/dup_nested.yaml"], 2, "key 'max_steps' appears twice (line 2 and line 4)"),
    (["train", "{d}/broken.yaml"], 2, "broken.yaml' is not valid YAML: expected ',' or ']'"),
    (["train", "{d}/binary.yaml"], 2, "binary.yaml' is not a text file (not UTF-8)"),
    (["train", "{d}/a_dir"], 2, "a_dir' is a directory; expected a YAML recipe file"),
    (["train", "{d}/list.yaml"], 2, "list.yaml' must be a mapping at the top level"),
    (["sft", "{d}/dup_nested.yaml"], 2, "key 'max_steps' appears twice"),
    (["train", "rewards=[{name: badimport.fn}]", "output_dir={d}/runs"], 2,
     "cannot load reward 'badimport.fn': importing 'badimport' raised RuntimeError: no GPU here ("),
    (["train", "rollout.temperature=1e-300", "output_dir={d}/runs"], 2, "rollout.temperature must be >= 0.01, got 1e-300"),
    (["train", "rollout.top_p=1.5"], 2, "rollout.top_p must be in (0, 1], got 1.5"),
    (["train", "eval.temperature=-1"], 2, "eval.temperature must be >= 0.01, got -1.0"),
    (["eval", "--limit", "-1"], 2, "--limit must be >= 1 (the first N problems), got -1"),
    (["eval", "--limit", "0"], 2, "--limit must be >= 1"),
    (["eval", "--temperature", "-0.5"], 2, "--temperature must be a finite number >= 0.01, got -0.5"),
    (["eval", "--temperature", "nan"], 2, "--temperature must be a finite number"),
    (["eval", "--temperature", "1e-300"], 2, "--temperature must be a finite number >= 0.01, got 1e-300"),
    (["eval", "--top-p", "1.5"], 2, "--top-p must be in (0, 1], got 1.5"),
    (["eval", "--top-p", "0"], 2, "--top-p must be in (0, 1]"),
    (["eval", "--max-new-tokens", "0"], 2, "--max-new-tokens must be >= 1"),
    (["eval", "--n", "-1"], 2, "--n must be >= 0"),
    (["eval", "--k", "0", "2"], 2, "--k values must be >= 1, got [0, 2]"),
    (["eval", "eval.top_p=2"], 2, "eval.top_p must be in (0, 1], got 2"),
    (["chat", "--prompt", "hi", "--temperature", "-1"], 2, "--temperature must be 0 (greedy) or a finite number >= 0.01"),
    (["chat", "--prompt", "hi", "--top-p", "1.5"], 2, "--top-p must be in (0, 1], got 1.5"),
    (["chat", "--prompt", "hi", "--max-new-tokens", "0"], 2, "--max-new-tokens must be >= 1, got 0"),
    (["generate", "--limit", "-1"], 2, "generate.limit must be >= 1 or null, got -1"),
    (["generate", "generate.temperature=0"], 2, "generate.temperature must be >= 0.01, got 0.0"),
    (["generate", "generate.top_p=1.01"], 2, "generate.top_p must be in (0, 1], got 1.01"),
    (["report", "{d}/a_dir"], 2, "a_dir is not a run directory"),
]


@pytest.mark.parametrize("args, code, words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line(files, capsys, args, code, words):
    assert main([a.replace("{d}", str(files)) for a in args]) == code
    assert words in one_line(capsys)


def test_the_traceback_is_there_when_asked_for(tmp_path):
    """R1KIT_TRACEBACK=1 re-raises the one-line errors, for a bug report (exit 1, Python's own)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "r1kit", "train", "train.max_steps=[1"]
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1 and "Traceback" not in quiet.stderr
    loud = subprocess.run(args, capture_output=True, text=True, env={**env, "R1KIT_TRACEBACK": "1"}, cwd=tmp_path)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ConfigError: override" in loud.stderr


def test_a_bug_keeps_its_traceback(monkeypatch):
    """An error r1kit does not know as the user's (a bug) is not turned into one line."""
    from r1kit import cli

    def buggy(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "train", buggy)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train"])


def short_reward(completions, **kwargs):
    return [1.0]


def text_reward(completions, **kwargs):
    return ["good"] * len(completions)


def infinite_reward(completions, **kwargs):
    return [float("inf")] * len(completions)


def raising_reward(completions, **kwargs):
    return {}["missing"]


@pytest.mark.parametrize("reward, words", [
    ("short_reward", "reward 'short_reward' returned 1 values, expected 8"),
    pytest.param("text_reward", "reward 'text_reward' returned str at index 0, expected float or None",
                 marks=pytest.mark.slow),  # the same path as short_reward; combine's own table is in test_rewards.py
    pytest.param("infinite_reward", "reward 'infinite_reward' returned inf at index 0; rewards must be finite",
                 marks=pytest.mark.slow),
    ("raising_reward", "reward 'raising_reward' raised KeyError: 'missing' ("),
])
def test_a_reward_that_breaks_the_contract_is_one_line(small_model_dir, tmp_path, capsys, reward, words):
    from test_trainer import FAST

    args = ["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=t", *FAST,
            f"rewards=[{{name: test_cli_errors.{reward}}}]", "train.max_steps=1", "eval.before=false",
            "eval.after=false"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"r1kit train: error: {words}" in err and "Traceback" not in err


def test_a_torn_checkpoint_is_one_line_on_resume(small_model_dir, tmp_path, capsys):
    from test_trainer import FAST

    args = ["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=t", *FAST,
            "train.save_every=1", "eval.before=false", "eval.after=false"]
    assert main([*args, "train.max_steps=1"]) == 0
    capsys.readouterr()
    state = tmp_path / "t" / "checkpoints" / "step-1" / "accelerator"
    # found by the checkpoint's checksums or its pickle check, before anything loads it
    for name, words in (("model.safetensors", "model.safetensors is torn"), ("optimizer.bin", "optimizer.bin is torn")):
        original = (state / name).read_bytes()
        (state / name).write_bytes(original[:len(original) // 2])  # a kill mid-copy, a full disk
        assert main([*args, "train.max_steps=2", "train.resume_from=latest"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
        assert "no other checkpoint is left" in err or "resume from an earlier" in err
        assert len(err.strip().splitlines()) == 1
        (state / name).write_bytes(original)
