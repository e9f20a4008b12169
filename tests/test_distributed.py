"""Several processes on a CPU (2 processes over gloo, as CI runs them): every strategy reproduces the
single-process update, resumes exactly, runs as two "nodes" on loopback, and fails clearly.

Each case launches `accelerate launch --config_file recipes/accelerate/<strategy>.yaml -m r1kit train`
exactly as the README says, on a small random model. Marker `distributed` (CI: its own step).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1kit.recipe import load_recipe
from r1kit.trainer import train

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parent.parent
# fp32 on one machine: the processes sum gradients in another order than one process does (measured
# max |difference| after 3 AdamW steps: 1e-6 to 2.5e-6, on weights that moved by 3e-3)
LAYOUT_ATOL = 2e-5


def recipe(tmp_path, model_dir, **sections) -> Path:
    tree = {"model": {"name_or_path": model_dir}, "output_dir": str(tmp_path / "runs"),
            "rewards": [{"name": "reward_fixtures.length_reward"}],
            "train": {"batch_size": 16, "micro_batch_size": 4, "learning_rate": 1e-3, "max_steps": 3, "save_every": 2},
            "rollout": {"num_generations": 4, "max_completion_length": 12}, "data": {"eval_size": 6},
            # beta > 0: every layout also loads and scores the KL reference (replicated; LoRA: adapters off)
            "algo": {"beta": 0.04},
            "eval": {"max_new_tokens": 12, "every": 0}, "log": {"progress": False, "console_every": 0}}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_args(strategy: str, processes: int = 2, port: int | None = None) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "recipes" / "accelerate" / f"{strategy}.yaml"), "--num_processes", str(processes),
            "--main_process_port", str(port or free_port())]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


def launch(strategy: str, recipe_path: Path, *overrides: str, timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = [*launch_args(strategy), "-m", "r1kit", "train", str(recipe_path), *overrides]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single(tmp_path_factory, small_model_dir):
    """One process, in this process: the reference every layout must reproduce (full and LoRA)."""
    tmp = tmp_path_factory.mktemp("single")
    sys.path.insert(0, str(ROOT / "tests"))
    runs = {}
    for name, extra in (("full", {}), ("lora", {"model": {"lora": {"enabled": True, "r": 4}}})):
        train(load_recipe(recipe(tmp, small_model_dir, **extra), [f"name={name}"]))
        runs[name] = tmp / "runs" / name
    start = load_file(f"{small_model_dir}/model.safetensors")
    assert max_diff(final_weights(runs["full"]), start) > 1e-3  # the update is real
    return runs


@pytest.mark.parametrize("strategy, lora", [("ddp", False), ("zero2", False), ("zero3", False), ("fsdp2", False),
                                            ("zero2-offload", True)])
def test_each_strategy_reproduces_the_single_process_update(strategy, lora, single, small_model_dir, tmp_path):
    extra = {"model": {"gradient_checkpointing": True, **({"lora": {"enabled": True, "r": 4}} if lora else {})}}
    out = launch(strategy, recipe(tmp_path, small_model_dir, **extra), "name=t")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    reference = single["lora" if lora else "full"]
    assert max_diff(final_weights(run), final_weights(reference)) < LAYOUT_ATOL
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["strategy"] == strategy.removesuffix("-offload")
    assert summary["replicas_identical"] is (None if strategy in ("zero3", "fsdp2") else True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]  # written once, by the main process
    mine = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward", "completion/mean_length", "completion/max_length"):  # global metrics, same samples
        assert [m[key] for m in lines] == pytest.approx([m[key] for m in mine], abs=1e-6), key
    assert lines[-1]["kl"] > 0 and lines[-1]["kl"] == pytest.approx(mine[-1]["kl"], rel=1e-3)  # the reference works
    assert (run / "checkpoints" / "step-2" / "accelerator").is_dir()
    assert out.stdout.count("done: 3 steps") == 1  # one process speaks


@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_a_crashed_run_resumes_exactly(strategy, small_model_dir, tmp_path):
    path = recipe(tmp_path, small_model_dir, rewards=[{"name": "reward_fixtures.fail_on_third_call"}])
    straight = launch(strategy, recipe(tmp_path, small_model_dir), "name=straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    crashed = launch(strategy, path, "name=t")
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    checkpoints = tmp_path / "runs" / "t" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-2"]  # complete, nothing half-written
    resumed = launch(strategy, path, "name=t", "train.resume_from=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(tmp_path / "runs" / "straight"), final_weights(tmp_path / "runs" / "t")
    assert max_diff(a, b) == 0.0
    steps = [json.loads(x)["step"] for x in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3


def test_two_nodes_on_loopback_match_one_process(single, small_model_dir, tmp_path):
    """`accelerate launch --num_machines 2 --machine_rank R --main_process_ip ...`: one process per "node"."""
    path, port = recipe(tmp_path, small_model_dir), free_port()
    nodes = [subprocess.Popen([*launch_args("ddp", 2, port), "--num_machines", "2", "--machine_rank", str(rank),
                               "--main_process_ip", "127.0.0.1", "-m", "r1kit", "train", str(path), "name=t"],
                              env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=400) for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert max_diff(final_weights(tmp_path / "runs" / "t"), final_weights(single["full"])) < LAYOUT_ATOL


def test_prompts_that_do_not_split_evenly_fail_before_anything_is_written(small_model_dir, tmp_path):
    out = launch("ddp", recipe(tmp_path, small_model_dir, train={"batch_size": 12}), "name=t")
    assert out.returncode != 0  # each process exits 2; the launcher reports its own 1
    assert "prompts per step (3) must be divisible by the number of processes (2)" in out.stderr
    assert not (tmp_path / "runs" / "t").exists()


def test_r1kit_launch_ends_a_failed_run_in_one_line(small_model_dir, tmp_path):
    """`r1kit launch` is `accelerate launch ... -m r1kit`: the ranks' own error lines, then one line naming the rank
    that failed, instead of the launcher's report and traceback."""
    cmd = [sys.executable, "-m", "r1kit", "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()), "train",
           str(recipe(tmp_path, small_model_dir, train={"batch_size": 12})), "name=t"]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if x.strip() and "Warning" not in x and "warnings.warn" not in x]
    assert all(x.startswith(("r1kit train: error: prompts per step (3)", "r1kit launch: error: rank ")) for x in lines), \
        out.stderr[-3000:]
    assert lines[-1].startswith("r1kit launch: error: rank ") and "of `r1kit train` exited with code 2" in lines[-1]
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr
    assert not (tmp_path / "runs" / "t").exists()


def test_a_bf16_recipe_under_zero3_trains_and_saves_bf16(small_model_dir, tmp_path):
    """zero3.yaml leaves precision to the recipe (mixed_precision 'no'): DeepSpeed would partition in float32, so
    r1kit turns its bf16 section on and the recipe's bf16 holds in training and in final/ (the shipped bf16 seed
    recipes launch with zero3.yaml)."""
    out = launch("zero3", recipe(tmp_path, small_model_dir, model={"dtype": "bfloat16"}), "name=t")
    assert out.returncode == 0, out.stderr[-3000:]
    weights = final_weights(tmp_path / "runs" / "t")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}


def test_a_launch_that_would_change_the_recipes_dtype_is_refused(small_model_dir, tmp_path):
    """A launch whose mixed_precision contradicts the recipe (bf16 for a float32 recipe) would train and save in
    bf16, so it is refused on one line, after the strategy is set up, before anything is written."""
    cmd = [*launch_args("zero3"), "--mixed_precision", "bf16", "-m", "r1kit", "train",
           str(recipe(tmp_path, small_model_dir, model={"dtype": "float32"})), "name=t"]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert out.returncode != 0
    lines = [x for x in out.stderr.splitlines() if "r1kit train: error:" in x]
    assert lines and "model.dtype=float32, but zero3 holds the weights in bfloat16" in lines[0], out.stderr[-3000:]
    assert not (tmp_path / "runs" / "t" / "config.yaml").exists()


def test_a_rank_that_dies_stops_the_others(small_model_dir, tmp_path):
    path = recipe(tmp_path, small_model_dir, rewards=[{"name": "reward_fixtures.fail_on_rank_one_at_step_two"}],
                  train={"save_every": 1})
    start = time.monotonic()
    out = launch("ddp", path, "name=t", timeout=300)
    assert out.returncode != 0 and time.monotonic() - start < 240
    assert "simulated failure on rank 1" in out.stderr and "rank      : 1" in out.stderr  # the launcher names it
    checkpoints = tmp_path / "runs" / "t" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-1"]


def test_a_strategy_without_a_launcher_is_a_clear_error(small_model_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "r1kit", "train", str(recipe(tmp_path, small_model_dir)), "name=t"],
                         env={**env(), "ACCELERATE_USE_DEEPSPEED": "true"}, capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "DeepSpeed needs a process group" in out.stderr
    assert "accelerate launch --config_file recipes/accelerate/" in out.stderr
    assert not (tmp_path / "runs" / "t").exists()


SRUN = """#!/bin/bash
# srun stand-in: run the command once per requested node, here, with the node's SLURM_NODEID
nodes=1; while [[ $1 == --* ]]; do case $1 in --nodes=*) nodes=${1#--nodes=};; esac; shift; done
if (( nodes == 1 )); then SLURM_NODEID=0 exec "$@"; fi
pids=(); for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
status=0; for p in "${pids[@]}"; do wait "$p" || status=$?; done; exit $status
"""


def test_the_slurm_script_trains_on_two_nodes_with_a_reference_node(single, small_model_dir, tmp_path):
    """recipes/slurm/train.slurm with stand-ins for scontrol and srun: 3 "nodes" on loopback, 2 training
    (one process each) and 1 serving `r1kit serve-ref`, whose URL the script passes to the trainer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nfor i in 1 2 3; do echo localhost; done\n")
    (bin_dir / "srun").write_text(SRUN)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    path = recipe(tmp_path, small_model_dir, algo={"beta": 0.04})
    environment = {**env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_NODELIST": "fake[1-3]",
                   "GPUS_PER_NODE": "1", "MASTER_PORT": str(free_port()), "REF_PORT": str(free_port()),
                   "R1KIT": f"{sys.executable} -m r1kit", "ACCELERATE": f"{sys.executable} -m accelerate.commands.accelerate_cli"}
    out = subprocess.run(["bash", str(ROOT / "recipes" / "slurm" / "train.slurm"), str(path),
                          str(ROOT / "recipes" / "accelerate" / "ddp.yaml"), "0", "1", "name=t"],
                         env=environment, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["services"]["reference_url"] == f"http://localhost:{environment['REF_PORT']}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    kl = [json.loads(x)["kl"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # the reference server answered


def test_offpolicy_corrections_and_the_entropy_quantile_do_not_depend_on_the_layout(small_model_dir, tmp_path):
    """2 processes x B/2 = 1 process x B with the batch-wide entropy quantile (gathered over ranks), masked
    sequence-level IS and the off-policy mask on, under CISPO: the same threshold, minimum ratio and weights.
    The HF engine samples from the trainer's weights, so the bounds mask nothing here: a bound at a ratio of 1
    would split on rounding noise, which differs between layouts."""
    algo = {"algo": {"beta": 0.0, "loss_type": "cispo", "top_entropy_quantile": 0.3, "is_correction": True,
                     "is_mode": "sequence_mask", "is_cap": 2.0, "off_policy_mask_threshold": 0.5},
            "train": {"max_steps": 2, "save_every": 0}}
    train(load_recipe(recipe(tmp_path, small_model_dir, **algo), ["name=one"]))
    out = launch("ddp", recipe(tmp_path, small_model_dir, **algo), "name=two")
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert max_diff(final_weights(two), final_weights(one)) < LAYOUT_ATOL
    m1, m2 = ([json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (one, two))
    for key in ("entropy_mask/threshold", "is/ratio_min", "is/ratio_max"):
        assert [m[key] for m in m2] == pytest.approx([m[key] for m in m1], rel=1e-5), key
