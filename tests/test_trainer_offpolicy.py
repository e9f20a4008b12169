"""Off-policy corrections and the newer objectives wired through the trainer, on a small random model,
and their config keys (TRL's names, the asynchronous default, the checks)."""

import pytest
import torch

from r1kit.config import ConfigError, to_dict
from r1kit.recipe import load_recipe
from r1kit.config_checks import changed_settings
from r1kit.trainer import train
from test_trainer import cfg_for, weights
from test_trainer_family import QUIET, metrics


def test_a_bf16_sampler_is_corrected_and_every_statistic_is_logged(small_model_dir, tmp_path):
    # rollout.autocast=bfloat16 samples from a bf16-rounded policy: pi_old / pi_engine really differs from 1
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "rollout.autocast=bfloat16", "algo.loss_type=cispo",
                  "algo.vllm_importance_sampling_correction=true", "algo.vllm_importance_sampling_mode=sequence_mask",
                  "algo.vllm_importance_sampling_clip_max=1.0", "algo.off_policy_mask_threshold=0.0",
                  "algo.top_entropy_quantile=0.2", *QUIET))
    for m in metrics(tmp_path):
        assert m["is/ratio_min"] < 1 < m["is/ratio_max"]  # the sampler's gap, token by token
        assert m["is/seq_ratio_min"] <= m["is/seq_ratio_mean"] <= m["is/seq_ratio_max"]
        assert 0 < m["is/masked_sequence_fraction"] < 1  # sequences whose ratio product is above 1
        assert 0 < m["is/masked_token_fraction"] < 1  # the masked sequences' tokens
        assert 0 <= m["opsm/masked_sequence_fraction"] <= 1 and m["opsm/kl_max"] >= m["opsm/kl_mean"]
        assert 0 < m["entropy_mask/kept_token_fraction"] < 0.6 and m["entropy_mask/threshold"] > 0


def test_bounds_of_one_leave_the_run_unchanged(small_model_dir, tmp_path):
    """sequence_truncate with C_min = C_max = 1 makes every weight exactly 1: the update is the uncorrected one."""
    train(cfg_for(small_model_dir, tmp_path / "plain", "train.max_steps=1", "algo.loss_type=sapo", *QUIET))
    train(cfg_for(small_model_dir, tmp_path / "one", "train.max_steps=1", "algo.loss_type=sapo", "algo.is_correction=true",
                  "algo.is_mode=sequence_truncate", "algo.is_cap=1.0", "algo.is_min=1.0", *QUIET))
    plain, one = weights(tmp_path / "plain" / "t" / "final"), weights(tmp_path / "one" / "t" / "final")
    assert all(torch.equal(plain[k], one[k]) for k in plain)


@pytest.mark.slow
def test_quantile_zero_trains_only_the_highest_entropy_token(small_model_dir, tmp_path):
    """top_entropy_quantile = 0 keeps only the batch's highest-entropy token (TRL's documented edge case)."""
    train(cfg_for(small_model_dir, tmp_path, "train.max_steps=1", "algo.top_entropy_quantile=0.0", *QUIET))
    m = metrics(tmp_path)[0]
    assert m["entropy_mask/kept_token_fraction"] <= 1 / 8  # one token of >= 8 (8 completions of >= 1 token)


@pytest.mark.slow
def test_entropy_threshold_does_not_depend_on_the_micro_batch_size(small_model_dir, tmp_path):
    for mbs in (2, 8):
        train(cfg_for(small_model_dir, tmp_path / str(mbs), "train.max_steps=1", f"train.micro_batch_size={mbs}",
                      "algo.top_entropy_quantile=0.3", *QUIET))
    a, b = (metrics(tmp_path / str(mbs))[0] for mbs in (2, 8))
    assert a["entropy_mask/threshold"] == pytest.approx(b["entropy_mask/threshold"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["cispo", "sapo"])
def test_new_objectives_differ_from_the_clip_once_the_policy_moves(small_model_dir, tmp_path, loss_type):
    """With one update per batch every objective's gradient is GRPO's; with three (the ratio leaves 1) they differ."""
    common = ["train.max_steps=1", "algo.num_iterations=3", "train.learning_rate=1e-2", "algo.loss_agg=token_mean",
              "algo.epsilon_high=0.05", "algo.epsilon=0.05", *QUIET]
    train(cfg_for(small_model_dir, tmp_path / "clip", *common))
    train(cfg_for(small_model_dir, tmp_path / loss_type, f"algo.loss_type={loss_type}", *common))
    clip, other = weights(tmp_path / "clip" / "t" / "final"), weights(tmp_path / loss_type / "t" / "final")
    assert any(not torch.equal(clip[k], other[k]) for k in clip)
    m = metrics(tmp_path / loss_type)[0]
    assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and m["update/last_ratio_mean"] != pytest.approx(1.0)
    if loss_type == "sapo":
        assert m["update/last_clip_fraction"] == 0.0  # nothing is hard-clipped


def test_trl_names_asynchronous_default_and_checks(tmp_path):
    cfg = load_recipe(None, ["algo.vllm_importance_sampling_mode=token_mask", "algo.vllm_importance_sampling_cap=3",
                             "algo.vllm_importance_sampling_clip_min=0.5"])
    assert (cfg.algo.is_mode, cfg.algo.is_cap, cfg.algo.is_min) == ("token_mask", 3.0, 0.5)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algo: {vllm_importance_sampling_clip_max: 3.0, is_cap: 2.0}\n")
    with pytest.raises(ConfigError, match="vllm_importance_sampling_clip_max is TRL's name for algo.is_cap"):
        load_recipe(recipe)
    # left unset, the correction is off in the synchronous loop and on when generation is asynchronous
    algo = load_recipe(None, []).algo
    assert algo.resolved().is_correction is False and algo.resolved(asynchronous=True).is_correction is True
    explicit = load_recipe(None, ["algo.is_correction=false"]).algo
    assert explicit.resolved(asynchronous=True).is_correction is False
    assert load_recipe(None, ["algo.loss_type=cispo"]).algo.objective == "cispo"


@pytest.mark.parametrize("overrides,message", [
    (["algo.is_correction=true", "algo.is_cap=null"], "algo.is_correction needs a bound"),
    (["algo.is_min=1.5"], "algo.is_min must be in [0, 1] or null"),
    (["algo.is_mode=sequence"], "algo.is_mode: expected one of"),
    (["algo.off_policy_mask_threshold=-1"], "algo.off_policy_mask_threshold must be >= 0"),
    (["algo.top_entropy_quantile=1.5"], "algo.top_entropy_quantile must be in [0, 1]"),
    (["algo.loss_type=sapo", "algo.sapo_temperature_neg=0"], "algo.sapo_temperature_pos and"),
    (["algo.loss_type=cispo", "algo.dual_clip=3"], "algo.dual_clip applies to the clipped objective only"),
    (["algo.loss_type=luspo", "algo.importance_sampling_level=token"], "algo.loss_type=luspo scales sequence-level"),
])
def test_bad_offpolicy_settings_fail_naming_the_keys(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_recipe(None, overrides)


def test_a_run_saved_before_the_new_keys_existed_still_resumes():
    """A config.yaml written before algo.is_mode etc. existed: their defaults are no change; another value is."""
    cfg = load_recipe(None, [])
    saved = to_dict(cfg)
    saved["algo"] = {k: v for k, v in to_dict(cfg.algo.resolved()).items()
                     if k not in ("is_mode", "is_min", "off_policy_mask_threshold", "top_entropy_quantile")}
    assert changed_settings(saved, cfg) == ([], [])
    refused, _ = changed_settings(saved, load_recipe(None, ["algo.top_entropy_quantile=0.2"]))
    assert refused == ["algo.top_entropy_quantile: None -> 0.2"]
