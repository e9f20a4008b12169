"""Every GRPO-family preset and option, wired into the trainer, on a small random model."""

import json
import math

import pytest
import torch

from r1kit.config import PRESET_KNOBS, ConfigError
from r1kit.recipe import load_recipe
from r1kit.trainer import train
from test_trainer import cfg_for, weights


def metrics(tmp_path):
    return [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]


QUIET = ["eval.before=false", "eval.after=false"]


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "dapo", "bnpo", "gspo", "luspo"])
def test_every_preset_trains_and_changes_the_parameters(small_model_dir, tmp_path, preset):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", f"algo.loss_type={preset}", *QUIET))
    before, after = weights(small_model_dir), weights(tmp_path / "t" / "final")
    assert sum(not torch.equal(before[k], after[k]) for k in before) == len(before)
    saved = load_recipe(tmp_path / "t" / "config.yaml")  # the run records the preset resolved
    assert saved.algo.loss_type == preset and all(getattr(saved.algo, k) is not None for k in PRESET_KNOBS)
    m = metrics(tmp_path)[0]
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # one update per batch: ratio 1
    assert m["entropy"] > 0 and m["is/ratio_mean"] == pytest.approx(1.0, abs=1e-4)


def test_dapo_with_its_soft_overlong_reward(small_model_dir, tmp_path):
    # max_completion_length 12, buffer 4: completions over 8 tokens are punished, down to -1 at 12
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "algo.loss_type=dapo",
                  "rewards=[{name: reward_fixtures.length_reward}, {name: soft_overlong, overlong_buffer: 4}]", *QUIET))
    m = metrics(tmp_path)[0]
    assert -1 <= m["rewards/soft_overlong/mean"] < 0  # a random model runs long
    with pytest.raises(ConfigError, match=r"soft_overlong\).max_completion_length \(50\) must equal"):
        load_recipe(None, ["rewards=[{name: soft_overlong, max_completion_length: 50}]"])


def test_several_updates_per_batch_use_old_logprobs(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "algo.num_iterations=3", "algo.epsilon=0.05",
                  "train.learning_rate=1e-2", "train.lr_scheduler=cosine", *QUIET))
    m = metrics(tmp_path)
    assert m[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # first update: old logprobs = current weights
    assert m[0]["update/last_ratio_mean"] != pytest.approx(1.0, abs=1e-4)  # later updates moved the policy
    assert m[0]["update/last_clip_fraction"] > 0
    assert "time/old_logprobs" in m[0]
    # the scheduler counts optimizer steps: 2 steps x 3 updates = the whole cosine schedule; the logged lr is the
    # one the step's first update used: step 1 the full lr, step 2 cosine at 3 of 6 updates
    assert m[0]["lr"] == pytest.approx(1e-2, rel=1e-9)
    assert m[1]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 6)), rel=1e-9)


def test_dynamic_sampling_fills_the_batch_with_informative_groups(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=3", "algo.loss_type=dapo", "algo.max_sampling_rounds=6",
                  "rewards=[{name: algo_fixtures.half_the_prompts_informative}]", *QUIET))
    m = metrics(tmp_path)
    assert all(x["sampling/groups_kept"] == 2 for x in m)  # B = 8 / 4 = 2 prompts per step
    assert any(x["sampling/draws"] > 1 for x in m)  # some first draws had a zero-variance group
    samples = [json.loads(x) for x in (tmp_path / "t" / "samples.jsonl").read_text().splitlines()]
    assert all(len(set(s["total"])) > 1 for s in samples)  # every trained group varies


def test_dynamic_sampling_stops_at_its_cap(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "algo.loss_type=dapo", "algo.max_sampling_rounds=2",
                  "rewards=[{name: reward_fixtures.constant_reward}]", *QUIET))
    (m,) = metrics(tmp_path)
    assert m["sampling/draws"] == 3 and m["sampling/groups_kept"] == 0 and m["update/rows_fraction"] == 0
    before, after = weights(small_model_dir), weights(tmp_path / "t" / "final")
    assert all(torch.equal(before[k], after[k]) for k in before)  # no signal anywhere: no update


def test_group_std_filter_and_truncation_mask_drop_rows(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "algo.min_group_std=100",
                  "name=t", *QUIET))
    assert metrics(tmp_path)[0]["update/kept_fraction"] == 0  # no group varies by more than 100
    before, after = weights(small_model_dir), weights(tmp_path / "t" / "final")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_masking_truncated_completions(small_model_dir, tmp_path):
    # a random model rarely stops within 3 tokens: (almost) everything is truncated and masked out
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "rollout.max_completion_length=3",
                  "algo.mask_truncated_completions=true", *QUIET))
    m = metrics(tmp_path)[0]
    assert m["update/kept_fraction"] == pytest.approx(1 - m["completion/truncated_fraction"])
    assert m["completion/truncated_fraction"] > 0


def test_entropy_bonus_moves_weights_without_any_reward_signal(small_model_dir, tmp_path):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "algo.entropy_coef=0.1",
                  "rewards=[{name: reward_fixtures.constant_reward}]", *QUIET))
    before, after = weights(small_model_dir), weights(tmp_path / "t" / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics(tmp_path)[0]["update/rows_fraction"] == 1.0  # zero-advantage rows still run (entropy gradient)


@pytest.mark.parametrize("kl", ["k1", "k2"])
def test_kl_estimators_and_is_correction_run(small_model_dir, tmp_path, kl):
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "algo.beta=0.1", f"algo.kl_estimator={kl}",
                  "algo.is_correction=true", "algo.dual_clip=3", "algo.advantage_estimator=rloo",
                  "algo.scale_rewards=batch", *QUIET))
    m = metrics(tmp_path)
    assert m[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy = reference
    assert m[1]["kl"] != 0.0  # after an update the policy differs from the reference
    # the HF engine samples from the trainer's own weights: the importance ratio is 1
    assert all(abs(x["is/ratio_mean"] - 1) < 1e-4 and x["is/ratio_max"] < 1 + 1e-3 for x in m)


@pytest.mark.parametrize("overrides,message", [
    (["algo.epsilon=0.3", "algo.epsilon_high=0.2"], "algo.epsilon_high (0.2) must be >= algo.epsilon (0.3)"),
    (["algo.loss_type=dapo", "algo.epsilon=0.3"], "algo.epsilon_high (0.28) must be >= algo.epsilon (0.3)"),
    (["algo.num_iterations=0"], "algo.num_iterations must be >= 1"),
    (["algo.min_group_std=-0.1"], "algo.min_group_std must be >= 0"),
    (["algo.dynamic_sampling=true", "algo.max_sampling_rounds=0"], "algo.dynamic_sampling needs a cap"),
    (["algo.dual_clip=0.5"], "algo.dual_clip must be 0 (off) or > 1"),
    (["algo.is_cap=0.5"], "algo.is_cap must be >= 1"),
    (["algo.loss_type=ppo"], "algo.loss_type: expected one of"),
    (["algo.loss_agg=sum"], "algo.loss_agg: expected one of"),
])
def test_contradictory_settings_fail_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(None, overrides)


def test_a_wall_clock_budget_stops_the_run_and_still_saves(small_model_dir, tmp_path):
    summary = train(cfg_for(small_model_dir, tmp_path, "train.max_steps=50", "train.max_minutes=0.000001", *QUIET))
    assert summary["steps"] < 50 and summary["stopped_by_time_budget"]
    assert (tmp_path / "t" / "final" / "model.safetensors").exists()


def test_a_reward_that_raises_stops_the_run_or_is_counted(small_model_dir, tmp_path, capsys):
    broken = "rewards=[{name: reward_fixtures.length_reward}, {name: algo_fixtures.always_raises}]"
    with pytest.raises(Exception, match="always_raises.*bug in my reward|bug in my reward"):
        train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", broken, *QUIET))  # the default: raise
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", broken, "train.reward_on_error=none", "name=t2",
                  *QUIET))
    lines = [json.loads(x) for x in (tmp_path / "t2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["rewards/always_raises/errors"] for m in lines] == [1.0, 1.0]
    assert "reward 'always_raises' raised" in capsys.readouterr().out


def test_lora_reference_is_the_policy_with_adapters_disabled(small_model_dir, tiny_tokenizer):
    from r1kit.batch import completion_logprobs, make_batch
    from r1kit.config import LoraCfg, ModelCfg
    from r1kit.data.templates import build_messages, encode_prompt
    from r1kit.models import load_model
    from r1kit.reference import AdapterDisabledReference, LocalReference
    from r1kit.rollout.hf import HFEngine
    from r1kit.types import SamplingParams

    base = load_model(ModelCfg(name_or_path=small_model_dir), tiny_tokenizer)
    policy = load_model(ModelCfg(name_or_path=small_model_dir, lora=LoraCfg(enabled=True, r=4)), tiny_tokenizer)
    with torch.no_grad():  # trained adapters: lora_B is zero at init, so move it
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    rows = [{"prompt_ids": encode_prompt(tiny_tokenizer, build_messages(q))} for q in ("1+2?", "3+4+5?")]
    out = HFEngine(base, tiny_tokenizer).generate([r["prompt_ids"] for r in rows], 3,
                                                  SamplingParams(max_new_tokens=8, seed=0))
    batch = make_batch(out, rows, torch.zeros(len(out)), tiny_tokenizer.pad_token_id)
    ref = AdapterDisabledReference(policy, 1.0, 4).logprobs(batch)
    torch.testing.assert_close(ref, LocalReference(base, 1.0, 4).logprobs(batch), atol=1e-5, rtol=0)
    with torch.no_grad():  # and the adapters are back on afterwards
        assert (completion_logprobs(policy, batch) - ref).abs().max() > 1e-3


def test_lora_with_kl_trains_without_a_second_model(small_model_dir, tmp_path, monkeypatch):
    import r1kit.run as run_module

    loads = []
    real = run_module.load_model
    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=2", "algo.beta=0.1", "model.lora.enabled=true",
                  "model.lora.r=4", "train.learning_rate=5e-2", *QUIET))
    assert len(loads) == 1  # the policy only
    m = metrics(tmp_path)
    assert m[0]["kl"] == pytest.approx(0.0, abs=1e-6) and m[1]["kl"] > 0
