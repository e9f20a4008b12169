"""`r1kit report`: charts and a self-contained HTML page from a run directory, also from broken or
partial ones, and a comparison of several runs; the page looked at in headless Chromium."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1kit.report import phase_shares, read_run, write_comparison, write_report
from r1kit.report.charts import smooth

ROOT = Path(__file__).parent.parent


def metrics_row(step: int, **extra) -> dict:
    return {"step": step, "reward": 0.1 * step, "rewards/accuracy/mean": 0.1 * step, "rewards/format/mean": 0.5,
            "completion/mean_length": 10.0 + step, "completion/max_length": 20.0 + step,
            "completion/truncated_fraction": 0.0, "kl": 0.01 * step, "entropy": 0.5, "clip_fraction": 0.0,
            "grad_norm": 1.0, "lr": 1e-5, "time/generate": 3.0, "time/reward": 0.5, "time/update": 1.0,
            "time/weight_sync": 0.5, "time/step": 5.0, **extra}


def make_run(root: Path, name: str, steps: int = 8, drop: tuple = (), samples: bool = True, summary: bool = True) -> Path:
    """A run directory as the trainer writes it, with made-up numbers; `drop` leaves metric keys out."""
    run = root / name
    run.mkdir(parents=True)
    rows = [{k: v for k, v in metrics_row(s).items() if k not in drop} for s in range(1, steps + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if samples:
        records = [{"step": s, "prompt": f"prompt of step {s}", "answer": "7",
                    "completions": [f"<think>step {s} working</think><answer>7</answer>", "<answer>3</answer>"],
                    "rewards": {"accuracy": [1.0, 0.0]}, "total": [1.0, 0.0]} for s in (1, steps // 2, steps)]
        (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        (run / "summary.json").write_text(json.dumps({"accuracy_before": 0.3, "accuracy_after": 0.6,
                                                      "wall_seconds": 120.0, "eval_history": [[0, 0.3], [steps, 0.6]]}))
    return run


def embedded_images(html: str) -> int:
    return len(re.findall(r"<img [^>]*src='data:image/png;base64,[A-Za-z0-9+/=]{100,}'", html))


def test_report_of_a_complete_run(tmp_path):
    run = make_run(tmp_path, "good")
    out = write_report(run)
    html = out.read_text()
    assert out == run / "report.html"
    pngs = sorted(p.stem for p in (run / "report").glob("*.png"))
    assert pngs == sorted(["reward", "accuracy", "length", "truncated", "kl", "entropy", "clip_fraction", "grad_norm",
                           "lr", "phases", "phase_share"])
    assert embedded_images(html) == len(pngs)  # every chart is inside the page, not linked
    assert "Not shown" not in html
    assert "30.0% → 60.0%" in html  # before -> after from summary.json
    assert "generate 60%" in html  # 3 of every 5 seconds
    for label in ("start: step 1", "middle: step 4", "end: step 8"):
        assert label in html
    assert "&lt;think&gt;step 8 working" in html  # completions are escaped, not interpreted as tags


def test_phase_shares_include_time_outside_the_named_phases(tmp_path):
    run = make_run(tmp_path, "p", drop=("time/weight_sync",))
    assert phase_shares(read_run(run)) == pytest.approx({"generate": 0.6, "update": 0.2, "reward": 0.1, "other": 0.1})


def test_smoothing_keeps_a_constant_and_short_runs_unchanged():
    assert smooth([2.0] * 50) == pytest.approx([2.0] * 50)
    assert smooth([1.0, 5.0, 2.0]) == [1.0, 5.0, 2.0]
    noisy = [float(i % 2) for i in range(100)]
    assert max(smooth(noisy)[50:]) - min(smooth(noisy)[50:]) < 0.2  # the alternation is smoothed away


def test_run_without_metrics_still_gets_a_page_that_says_so(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.yaml").write_text("name: empty\n")  # a run that crashed at set-up has its config only
    html = write_report(run).read_text()
    assert "metrics.jsonl does not exist" in html and "samples.jsonl does not exist" in html
    assert "summary.json does not exist" in html
    assert embedded_images(html) == 0 and "No chart could be drawn" in html


def test_half_written_last_line_is_skipped_and_named(tmp_path):
    run = make_run(tmp_path, "killed", steps=5, summary=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "reward": 0.')  # killed mid-write
    log = read_run(run)
    assert [m["step"] for m in log.metrics] == [1, 2, 3, 4, 5]
    html = write_report(run).read_text()
    assert "the last line is not complete JSON" in html
    assert embedded_images(html) == 11  # held-out points come from metrics' eval keys: none, training accuracy still drawn


def test_comparison_overlays_runs_of_different_lengths_and_metric_sets(tmp_path):
    a = make_run(tmp_path, "a", steps=8)
    b = make_run(tmp_path, "b", steps=3, drop=("kl", "entropy"))
    out = write_comparison([a, b])
    assert out == tmp_path / "compare-a-b" / "report.html"
    html = out.read_text()
    assert "the runs cover different steps: a 1–8; b 1–3" in html
    assert "b: no kl" in html and "b: no entropy" in html
    assert "a: no kl" not in html
    assert (tmp_path / "compare-a-b" / "report" / "kl.png").is_file()  # a's KL is still drawn
    assert embedded_images(html) == 11  # the phase area chart becomes seconds per step; phase shares one bar per run
    assert html.count("<tr>") == 3  # header and one overview row per run


def test_cli_report_and_its_errors(tmp_path):
    run = make_run(tmp_path, "cli")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "r1kit", "report", str(run)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert f"report: {run / 'report.html'}" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "r1kit", "report", str(tmp_path / "nope")], capture_output=True,
                             text=True, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"r1kit report: error: {tmp_path / 'nope'} is not a run directory"


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (CI: apt-get install -y chromium)")
def test_report_renders_its_charts_in_a_browser(tmp_path):
    """What a person sees: the page in headless Chromium shows the charts' lines, not broken images."""
    import numpy as np
    from PIL import Image

    out = write_report(make_run(tmp_path, "seen"))
    shot = tmp_path / "shot.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1600", f"--screenshot={shot}", out.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    r, g, b = np.asarray(Image.open(shot).convert("RGB")).astype(int).transpose(2, 0, 1)
    blue = int(((abs(r - 0x1F) < 40) & (abs(g - 0x77) < 40) & (abs(b - 0xB4) < 40)).sum())  # matplotlib's C0
    orange = int(((r > 220) & (g > 100) & (g < 160) & (b < 60)).sum())  # C1 (#ff7f0e)
    assert blue > 5000 and orange > 1000, (blue, orange)  # an empty or broken-image page has none of either


def test_training_writes_the_report_and_says_where(small_model_dir, tmp_path, capsys):
    from test_trainer import cfg_for

    from r1kit.trainer import train

    train(cfg_for(small_model_dir, tmp_path / "on", "train.max_steps=2", "eval.before=false", "eval.after=false",
                  "log.report=true"))
    run = tmp_path / "on" / "t"
    html = (run / "report.html").read_text()
    assert embedded_images(html) == 10  # all but accuracy: a length reward and no eval, which the page says
    assert "Accuracy: training samples (smoothed) and held-out greedy (points): no data" in html
    out = capsys.readouterr().out
    assert f"report: {run / 'report.html'}" in out
    assert re.search(r"time: .*generate \d+%", out)  # the phase shares in the final summary (largest first)

    train(cfg_for(small_model_dir, tmp_path / "off", "train.max_steps=1", "eval.before=false", "eval.after=false",
                  "log.report=false"))
    assert not (tmp_path / "off" / "t" / "report.html").exists()
    assert "report: off (log.report=false)" in capsys.readouterr().out


def test_a_crashed_run_still_gets_a_report_of_its_steps(small_model_dir, tmp_path, capsys):
    import reward_fixtures
    from test_trainer import FAST

    from r1kit.cli import main

    reward_fixtures.CALLS["n"] = 0
    args = ["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=t", *FAST,
            "rewards=[{name: reward_fixtures.fail_on_third_call}]", "train.max_steps=4", "eval.before=false",
            "log.report=true"]
    assert main(args) == 1  # a reward that raises is the user's function failing: one line, naming it and where
    html = (tmp_path / "t" / "report.html").read_text()
    assert "summary.json does not exist" in html and embedded_images(html) > 0  # two steps were logged
    err = capsys.readouterr().err
    assert f"stopped; report of the steps so far: {tmp_path / 't' / 'report.html'}" in err
    assert "r1kit train: error: reward 'fail_on_third_call' raised RuntimeError: simulated crash (" in err
    assert "Traceback" not in err

    (tmp_path / "t" / "report.html").unlink()
    assert main(args) == 2  # the directory holds a run: refused before training, and that run is left alone
    assert not (tmp_path / "t" / "report.html").exists() and "stopped" not in capsys.readouterr().err


def eval_item(index: int, sampled: list[float] | None) -> dict:
    item = {"index": index, "question": f"question {index}", "answer": "5", "completion": f"<answer>{index}</answer>",
            "extracted": str(index), "correct": float(index == 5)}
    return item | ({"sampled_correct": sampled} if sampled is not None else {})


def test_eval_page_shows_metrics_passk_and_worst_and_best_items(tmp_path):
    from r1kit.report.evaluation import write_eval_report

    items = [eval_item(i, [float(j < i) for j in range(4)]) for i in range(5)]  # item i: i of 4 samples right
    summary = {"model": "m", "benchmark": "b", "greedy_accuracy": 0.2, "pass@1": 0.5, "pass@2": 0.7, "pass@4": 0.8}
    page = write_eval_report(tmp_path / "m-b.jsonl", summary, items, show=2)
    html = page.read_text()
    assert page == tmp_path / "m-b.report.html" and (tmp_path / "m-b.passk.png").is_file()
    assert embedded_images(html) == 1 and "<td>pass@4</td><td>80.0%</td>" in html
    worst, best = html.split("<h2>Worst 2 problems</h2>")[1].split("<h2>Best 2 problems</h2>")
    assert re.findall(r"question (\d)", worst) == ["0", "1"] and re.findall(r"question (\d)", best) == ["4", "3"]


def test_greedy_only_eval_page_says_there_is_no_passk(tmp_path):
    from r1kit.report.evaluation import write_eval_report

    html = write_eval_report(tmp_path / "g.jsonl", {"greedy_accuracy": 0.5}, [eval_item(5, None), eval_item(1, None)]
                             ).read_text()
    assert "no pass@k: the evaluation was greedy only" in html and embedded_images(html) == 0
    assert re.findall(r"question (\d)", html.split("Best")[1]) == ["5", "1"]


def test_steps_repeated_by_a_resumed_run_show_their_last_values(tmp_path):
    run = make_run(tmp_path, "resumed", steps=3)
    with (run / "metrics.jsonl").open("a") as f:  # crashed after step 3, resumed from the step-2 checkpoint
        f.write(json.dumps(metrics_row(3, reward=0.9)) + "\n" + json.dumps(metrics_row(4)) + "\n")
    log = read_run(run)
    assert log.series("reward") == ([1, 2, 3, 4], [pytest.approx(0.1), pytest.approx(0.2), 0.9, pytest.approx(0.4)])
    assert "1 step(s) logged more than once" in log.problems[0]


def test_a_trl_output_directory_compares_with_an_r1kit_run(tmp_path):
    ours = make_run(tmp_path, "ours", steps=4)
    trl = tmp_path / "trl-out" / "checkpoint-4"
    trl.mkdir(parents=True)
    history = [{"step": s, "reward": 0.2 * s, "rewards/accuracy_reward/mean": 0.2 * s, "completions/mean_length": 30.0,
                "clip_ratio/region_mean": 0.01, "learning_rate": 1e-6, "kl": 0.001} for s in (1, 2, 3, 4)]
    history.append({"step": 4, "train_runtime": 60.0})  # the Trainer's closing entry shares the last step
    (trl / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    log = read_run(tmp_path / "trl-out")
    assert log.series("completion/mean_length") == ([1, 2, 3, 4], [30.0] * 4)
    assert log.series("clip_fraction")[1] == [0.01] * 4 and log.summary == {"wall_seconds": 60.0}
    html = write_comparison([ours, tmp_path / "trl-out"]).read_text()
    assert "a TRL log (no time per phase" in html and "trl-out: no entropy" in html
    assert (tmp_path / "compare-ours-trl-out" / "report" / "accuracy.png").is_file()


def test_a_second_report_leaves_no_chart_of_the_first(tmp_path):
    run = make_run(tmp_path, "again")
    write_report(run)
    assert (run / "report" / "kl.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "kl"}) + "\n" for r in rows))
    write_report(run)
    assert not (run / "report" / "kl.png").exists()


@pytest.mark.parametrize("contents", [(), ("notes.txt", "README.md"), ("checkpoints/",)])
def test_a_directory_that_holds_no_run_is_refused_and_left_unwritten(tmp_path, capsys, contents):
    from r1kit.cli import main

    folder = tmp_path / "not-a-run"
    folder.mkdir()
    for name in contents:
        (folder / name).mkdir() if name.endswith("/") else (folder / name).write_text("x")
    before = sorted(p.name for p in folder.iterdir())
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"r1kit report: error: {folder} is not a run directory: it has none of config.yaml, metrics.jsonl, "
                   "summary.json (an r1kit run) and no trainer_state.json (a TRL run)"]
    assert sorted(p.name for p in folder.iterdir()) == before  # no report.html, no report/


def coloured_pixels(png: Path, colour: str) -> int:
    """Pixels of `png` within a small distance of matplotlib colour `colour` (the drawn data, not the frame)."""
    import matplotlib.colors
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(png)[..., :3]
    return int((np.abs(image - np.array(matplotlib.colors.to_rgb(colour))).sum(axis=-1) < 0.15).sum())


def test_a_run_of_one_step_draws_its_points(tmp_path):
    run = make_run(tmp_path, "one", steps=1)
    write_report(run)
    assert coloured_pixels(run / "report" / "reward.png", "C0") > 20  # the one point of `reward`, as a marker
    assert coloured_pixels(run / "report" / "kl.png", "C0") > 20
    assert coloured_pixels(run / "report" / "phases.png", "C0") > 200  # the one step's phases as a stacked bar
    from r1kit.report.charts import _new_figure  # control: a frame with no data has no pixel of that colour

    fig, _ = _new_figure("empty")
    fig.savefig(tmp_path / "frame.png")
    assert coloured_pixels(tmp_path / "frame.png", "C0") == 0


@pytest.mark.parametrize("evals, shown", [
    ([(0, "before", 0.3)], "30.0% → n/a (stopped)"),
    ([(0, "before", 0.3), (4, "during", 0.45)], "30.0% → 45.0% (step 4, stopped)"),
    ([(4, "during", 0.45)], "n/a → 45.0% (step 4, stopped)"),  # eval.before=false
])
def test_a_stopped_run_shows_the_evaluations_it_ran(tmp_path, evals, shown):
    run = make_run(tmp_path, "stopped", steps=5, summary=False)
    (run / "evals.jsonl").write_text("".join(json.dumps({"step": s, "when": w, "eval/greedy_accuracy": a}) + "\n"
                                             for s, w, a in evals))
    html = write_report(run).read_text()
    assert shown in html


@pytest.mark.parametrize("seconds, shown", [(4.26, "4.3 s"), (42.0, "42 s"), (119.4, "119 s"), (120.0, "2.0 min"),
                                            (5400.0, "90.0 min"), (9000.0, "2.5 h"), (None, "n/a")])
def test_wall_time_is_shown_in_a_unit_that_fits(seconds, shown):
    from r1kit.report import duration

    assert duration(seconds) == shown
