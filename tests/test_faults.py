"""Runs that survive faults: signals, crashes before the first checkpoint, resumes that would change
settings, names that leave output_dir, non-finite training, and checkpoints that are torn or crafted."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from r1kit.checkpoint import CheckpointError, verify_pickles
from r1kit.cli import main
from r1kit.config import ConfigError
from r1kit.rundir import NonFiniteError
from r1kit.trainer import train
from test_trainer import FAST, cfg_for, weights

ROOT = Path(__file__).resolve().parent.parent


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# SIGINT in CI's slow step: both signals go through one handler, SIGTERM stays in the default suite
@pytest.mark.parametrize("sig, code", [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_the_step_and_the_run_resumes_exactly(small_model_dir, tmp_path, sig, code):
    steps = 20  # enough that the signal, sent once step 1 is logged, lands before the last step (steps are fast)
    args = [f"model.name_or_path={small_model_dir}", "name=t", *FAST, f"train.max_steps={steps}", "train.save_every=0",
            "eval.before=false"]
    train(cfg_for(small_model_dir, tmp_path / "straight", f"train.max_steps={steps}", "train.save_every=0", "eval.before=false"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    proc = subprocess.Popen([sys.executable, "-m", "r1kit", "train", f"output_dir={tmp_path / 'stopped'}", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics = tmp_path / "stopped" / "t" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == code, err[-2000:]
    stopped_at = steps_logged(tmp_path / "stopped" / "t")[-1]
    assert stopped_at < steps and f"after step {stopped_at}" in err and "train.resume_from=latest" in err
    assert "Traceback" not in err
    assert (tmp_path / "stopped" / "t" / "checkpoints" / f"step-{stopped_at}").is_dir()
    train(cfg_for(small_model_dir, tmp_path / "stopped", f"train.max_steps={steps}", "train.save_every=0", "eval.before=false",
                  "train.resume_from=latest"))
    a, b = weights(tmp_path / "straight" / "t" / "final"), weights(tmp_path / "stopped" / "t" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps_logged(tmp_path / "stopped" / "t") == list(range(1, steps + 1))


def test_a_run_stopped_before_its_first_checkpoint_starts_again(small_model_dir, tmp_path, capsys):
    import reward_fixtures

    reward_fixtures.CALLS["n"] = 0
    crashing = ["rewards=[{name: reward_fixtures.fail_on_third_call}]", "train.max_steps=4", "train.save_every=10",
                "eval.before=false"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(small_model_dir, tmp_path, *crashing))
    with pytest.raises(FileExistsError, match="resume it with train.resume_from=latest"):
        train(cfg_for(small_model_dir, tmp_path, *crashing))
    train(cfg_for(small_model_dir, tmp_path, *crashing, "train.resume_from=latest"))
    assert "holds no checkpoint yet: starting from step 0" in " ".join(capsys.readouterr().out.split())  # rich wraps
    assert steps_logged(tmp_path / "t") == [1, 2, 3, 4]


def test_a_resume_rewrites_the_steps_after_the_checkpoint_once(small_model_dir, tmp_path):
    import reward_fixtures

    reward_fixtures.CALLS["n"] = -1  # the third call is step 4: steps 1-3 logged, checkpoint at 2
    crashing = ["rewards=[{name: reward_fixtures.fail_on_third_call}]", "train.max_steps=5", "train.save_every=2",
                "eval.before=false"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(small_model_dir, tmp_path, *crashing))
    assert steps_logged(tmp_path / "t") == [1, 2, 3]
    with open(tmp_path / "t" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')  # and a line torn by a kill mid-write
    train(cfg_for(small_model_dir, tmp_path, *crashing, "train.resume_from=latest"))
    assert steps_logged(tmp_path / "t") == [1, 2, 3, 4, 5]


def test_a_resume_that_changes_settings(small_model_dir, tmp_path):
    base = ["train.max_steps=2", "train.save_every=1", "eval.before=false", "eval.after=false"]
    train(cfg_for(small_model_dir, tmp_path, *base))
    config = (tmp_path / "t" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"cannot take effect mid-run: train.learning_rate: 0.001 -> 0.01"):
        train(cfg_for(small_model_dir, tmp_path, *base, "train.learning_rate=1e-2", "train.resume_from=latest"))
    assert (tmp_path / "t" / "config.yaml").read_text() == config  # a refused resume writes nothing
    train(cfg_for(small_model_dir, tmp_path, *base[1:], "train.max_steps=3", "train.resume_from=latest"))
    assert (tmp_path / "t" / "config.before-step-2.yaml").read_text() == config  # both recorded
    assert "max_steps: 3" in (tmp_path / "t" / "config.yaml").read_text()
    assert steps_logged(tmp_path / "t") == [1, 2, 3]


def test_names_stay_inside_output_dir_and_sft_never_overwrites_a_run(small_model_dir, tmp_path, capsys):
    assert main(["train", f"output_dir={tmp_path}", "name=../escape"]) == 2
    assert "name must be a plain directory name inside output_dir" in capsys.readouterr().err
    assert main(["train", f"output_dir={tmp_path}", "name=/etc"]) == 2
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "eval.before=false", "eval.after=false"))
    before = {p: p.read_bytes() for p in (tmp_path / "t").rglob("*") if p.is_file()}
    assert main(["sft", f"output_dir={tmp_path}", "name=t", "sft.steps=1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (tmp_path / "t").rglob("*") if p.is_file()} == before


def test_a_non_finite_gradient_is_skipped_then_stops_the_run(small_model_dir, tmp_path):
    cfg = cfg_for(small_model_dir, tmp_path, "rewards=[{name: reward_fixtures.huge_reward}]", "algo.scale_rewards=none",
                  "train.max_steps=4", "train.save_every=1", "train.max_nonfinite_steps=1", "eval.before=false")
    with pytest.raises(NonFiniteError, match="2 steps had a NaN/inf gradient"):
        train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [m["update/skipped_nonfinite"] for m in lines] == [1.0]  # the second skip stopped the run
    assert lines[0]["grad_norm"] in ("NaN", "Infinity")  # visible as such, not null
    saved = weights(tmp_path / "t" / "checkpoints" / "step-1")
    start = weights(small_model_dir)
    assert all(torch.equal(saved[k], start[k]) for k in start)  # the skipped step changed nothing
    assert not (tmp_path / "t" / "final").exists()


def test_weights_that_blow_up_stop_the_run_without_saving_them(small_model_dir, tmp_path, capsys, monkeypatch):
    from r1kit.config_ranges import RANGES, Range

    monkeypatch.setitem(RANGES, "train.learning_rate", Range(0, low_open=True))  # 1e20 is refused at load otherwise
    code = main(["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=t", *FAST,
                 "train.learning_rate=1e20", "train.max_grad_norm=0", "train.max_steps=6", "train.save_every=1",
                 "train.max_nonfinite_steps=1", "eval.before=false", "rewards=[{name: unique_chars}]"])
    assert code == 1
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "Traceback" not in err
    for checkpoint in (tmp_path / "t" / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values())


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/r1kit-test-pwned"


def test_crafted_and_torn_checkpoints_are_refused(small_model_dir, tmp_path, capsys):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    base = ["train.max_steps=2", "train.save_every=1", "eval.before=false", "eval.after=false"]
    train(cfg_for(small_model_dir, tmp_path, *base))
    checkpoint = tmp_path / "t" / "checkpoints" / "step-2"
    optimizer = checkpoint / "accelerator" / "optimizer.bin"
    original = optimizer.read_bytes()
    with open(optimizer, "wb") as f:
        pickle.dump({"state": RunsCode()}, f)
    with pytest.raises(CheckpointError, match="refusing to load .*optimizer.bin"):
        verify_pickles(checkpoint / "accelerator")
    args = ["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=t", *FAST, *base[1:],
            "train.max_steps=3", "train.resume_from=latest"]
    assert main(args) == 2 and "refusing to load" in capsys.readouterr().err
    assert not os.path.exists(MARKER)  # nothing ran
    optimizer.write_bytes(original)
    state = checkpoint / "trainer_state.pt"
    for torn in (b"", state.read_bytes()[:100]):
        state.write_bytes(torn)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "is not a readable r1kit trainer state" in err and "Traceback" not in err
    with open(state, "wb") as f:
        pickle.dump(RunsCode(), f)
    assert main(args) == 2 and not os.path.exists(MARKER)


def test_environment_errors_are_one_line(small_model_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail at once
    assert main(["train", f"model.name_or_path={small_model_dir}", "output_dir=/proc/r1kit-cannot-write", "name=t",
                 *FAST, "train.max_steps=1"]) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1kit train: error:") and "/proc/r1kit-cannot-write" in err and "\n" not in err
    assert main(["train", "model.name_or_path=no-such-model-dir", f"output_dir={tmp_path}", "name=u"]) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert "model.name_or_path='no-such-model-dir' is not a local directory" in err and err.count("\n") == 0
    torn = tmp_path / "torn-model"
    torn.mkdir()
    for f in Path(small_model_dir).iterdir():
        (torn / f.name).write_bytes(f.read_bytes())
    (torn / "model.safetensors").write_bytes((torn / "model.safetensors").read_bytes()[:1000])
    assert main(["train", f"model.name_or_path={torn}", f"output_dir={tmp_path}", "name=v", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert f"model.name_or_path='{torn}' could not be read" in err and err.count("\n") == 0


def run_files(run_dir: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.slow  # several runs and resumes in subprocesses
def test_a_resume_that_fails_changes_nothing(small_model_dir, tmp_path, capsys):
    """A flipped byte, a torn file, or a failure after every checkpoint check (here: eval.max_new_tokens past the
    model's context) leaves config.yaml, the logs and the checkpoints byte for byte; each is one line."""
    base = [f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=t", *FAST, "train.max_steps=2",
            "train.save_every=1", "eval.before=false", "eval.after=false"]
    assert main(["train", *base]) == 0
    run = tmp_path / "t"
    before = run_files(run)
    model = run / "checkpoints" / "step-2" / "model.safetensors"
    original = model.read_bytes()
    flipped = bytearray(original)
    flipped[-5] ^= 0x10
    resume = ["train", *base, "train.max_steps=3", "train.resume_from=latest"]
    for damaged, message in [(bytes(flipped), f"{model} does not match its checksum"),
                             (original[:-7], f"{model} is torn: {len(original) - 7} bytes")]:
        model.write_bytes(damaged)
        assert main(resume) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "train.resume_from=" in err and "step-1" in err and err.count("\n") == 0, err
        model.write_bytes(original)
        assert run_files(run) == before
    assert main([*resume, "eval.max_new_tokens=100000"]) == 2  # fails after load_state, before the run dir changes
    assert "eval.max_new_tokens" in capsys.readouterr().err
    assert run_files(run) == before
    assert main(resume) == 0 and steps_logged(run) == [1, 2, 3]
    assert [p.name for p in run.glob("config.before-*")] == ["config.before-step-2.yaml"]  # max_steps: 2 -> 3
    assert main(resume) == 0  # the same settings again: resume_from is never a change, nothing to record
    assert [p.name for p in run.glob("config.before-*")] == ["config.before-step-2.yaml"]


def test_symlinks_and_foreign_files_are_refused_before_training(small_model_dir, tmp_path, capsys):
    outside = tmp_path / "outside"
    (outside / "final").mkdir(parents=True)
    (outside / "final" / "precious.txt").write_text("not r1kit's")
    out = tmp_path / "runs"
    out.mkdir()
    args = [f"model.name_or_path={small_model_dir}", f"output_dir={out}", *FAST, "train.max_steps=1", "eval.before=false"]
    (out / "linked").symlink_to(outside)  # a run directory that leads out of output_dir
    (out / "own").mkdir()
    (out / "own" / "final").symlink_to(outside / "final")  # final/ through a link
    (out / "foreign").mkdir()
    (out / "foreign" / "final").mkdir()  # a final/ no r1kit run wrote
    cases = [("name=linked", [], "is a symlink to"), ("name=own", [], "final is a symlink"),
             ("name=foreign", [], "already holds a run (final)"),
             ("name=foreign", ["train.resume_from=latest"], "holds final but no config.yaml")]
    for name, extra, message in cases:
        assert main(["train", name, *args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err
    assert (outside / "final" / "precious.txt").read_text() == "not r1kit's"
    assert sorted(p.name for p in outside.rglob("*")) == ["final", "precious.txt"]


def test_a_collapsed_run_is_said_or_stopped(small_model_dir, tmp_path, capsys):
    collapsing = ["rewards=[{name: reward_fixtures.signal_then_zero}]", "train.max_steps=4", "train.save_every=1",
                  "eval.before=false", "eval.after=false", "train.collapse_steps=2"]
    train(cfg_for(small_model_dir, tmp_path / "warn", *collapsing))  # warn: the run goes on to its end, said once
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("the run collapsed") == 1 and "every reward was 0 in steps 2-3" in out
    assert steps_logged(tmp_path / "warn" / "t") == [1, 2, 3, 4]
    code = main(["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path / 'stop'}", "name=t", *FAST,
                 *collapsing, "train.on_collapse=stop"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "every reward was 0 in steps 2-3" in err and "step-1" in err, err
    assert steps_logged(tmp_path / "stop" / "t") == [1, 2, 3]


def test_a_skipped_update_leaves_the_schedule_where_it_was(small_model_dir, tmp_path):
    """The schedule counts updates made: a step whose gradient was NaN/inf does not step it (torch warns
    "lr_scheduler.step() before optimizer.step()" otherwise), and the logged lr is the one the step used."""
    import warnings

    cfg = cfg_for(small_model_dir, tmp_path, "rewards=[{name: reward_fixtures.huge_reward}]", "algo.scale_rewards=none",
                  "train.max_steps=1", "train.save_every=0", "train.max_nonfinite_steps=1", "train.lr_scheduler=cosine",
                  "eval.before=false", "eval.after=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    (line,) = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert line["update/skipped_nonfinite"] == 1.0 and line["lr"] == 1e-3
