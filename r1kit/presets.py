"""Named algorithm presets: `algo.loss_type` sets a consistent combination of knobs in one key.

A preset fills every AlgoCfg knob the recipe leaves unset (None); a knob set explicitly in the
recipe wins, and validate() rejects contradictions (e.g. epsilon_high < epsilon). The resolved
values are what the run directory's config.yaml records, so a run says what it really did.

This module is plain data at the config layer (no torch): the math lives in r1kit.algo.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    advantage_estimator: str  # grpo (group mean baseline) or rloo (leave-one-out baseline)
    scale_rewards: str  # group | batch | none: what divides the centred rewards
    loss_agg: str  # how per-token losses become one number (r1kit.algo.loss.AGGREGATIONS)
    importance_sampling_level: str  # token (PPO/GRPO) or sequence (GSPO)
    epsilon: float  # lower clip range: ratio >= 1 - epsilon
    epsilon_high: float | None  # upper clip range: ratio <= 1 + epsilon_high (None: = epsilon)
    dynamic_sampling: bool  # DAPO: redraw until the batch is full of groups that carry signal
    paper: str  # where it comes from, and where r1kit deviates
    objective: str = "clip"  # the per-token policy loss (r1kit.algo.objectives.OBJECTIVES)


PRESETS: dict[str, Preset] = {
    "grpo": Preset(
        "grpo", "group", "seq_mean_token_mean", "token", 0.2, None, False,
        "Shao et al. 2024, DeepSeekMath (arXiv:2402.03300), eq. 3 and the outcome-supervision advantage. "
        "Deviation: beta defaults to 0 (no reference model), as TRL and DAPO/Dr.GRPO found the KL "
        "term unnecessary for verifiable rewards; set algo.beta=0.04 for the paper's value."),
    "dr_grpo": Preset(
        "grpo", "none", "seq_mean_token_sum_norm", "token", 0.2, None, False,
        "Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO, arXiv:2503.20783): no division "
        "by the group std (question-difficulty bias) and token sums divided by a constant, "
        "max_completion_length, instead of each response's length (length bias). As in the paper."),
    "dapo": Preset(
        "grpo", "group", "token_mean", "token", 0.2, 0.28, True,
        "Yu et al. 2025, DAPO (arXiv:2503.14476): clip-higher (0.2/0.28), token-level loss over the "
        "whole batch, dynamic sampling. The paper's overlong reward shaping is a reward here: add "
        "{name: soft_overlong} to rewards. Deviation: dynamic sampling stops after "
        "algo.max_sampling_rounds extra rounds and trains on the informative groups found so far."),
    "bnpo": Preset(
        "grpo", "group", "local_token_mean", "token", 0.2, None, False,
        "TRL's loss_type='bnpo': token-level mean over each micro-batch (the 'local batch'), then the "
        "mean over micro-batches, so the result depends on train.micro_batch_size. Deviation: the "
        "name follows TRL; the BNPO paper's (Xiao et al. 2025, arXiv:2506.02864) adaptive Beta "
        "normalisation of rewards is not implemented."),
    "gspo": Preset(
        "grpo", "group", "seq_mean_token_mean", "sequence", 3e-4, 4e-4, False,
        "Zheng et al. 2025, Group Sequence Policy Optimization (arXiv:2507.18071): the ratio is the "
        "length-normalised sequence likelihood ratio exp(mean_t(log pi - log pi_old)), clipped at "
        "3e-4/4e-4 as in the paper. With num_iterations=1 the ratio is 1 and the gradient equals "
        "GRPO's with per-sequence token means."),
    "cispo": Preset(
        "grpo", "group", "token_mean", "token", 0.2, 4.0, False,
        "MiniMax-M1 (arXiv:2506.13585): CISPO, REINFORCE weighted by the importance ratio clipped from "
        "above and detached, so clipped tokens keep a gradient; token-level loss over the batch. The cap is "
        "1 + epsilon_high = 5, ScaleRL's (arXiv:2510.13786) epsilon_max = 5 (TRL's epsilon_high=5.0 for "
        "cispo); no lower bound, as in the paper. Differs from GRPO only with num_iterations > 1 or "
        "asynchronous generation (the ratio is 1 otherwise).", objective="cispo"),
    "sapo": Preset(
        "grpo", "group", "seq_mean_token_mean", "token", 0.2, None, False,
        "Gao et al. 2025, Soft Adaptive Policy Optimization (arXiv:2511.20347): the clip is replaced by the "
        "gate (4/tau)*sigmoid(tau*(r-1)), tau = algo.sapo_temperature_pos (1.0) for A > 0 and "
        "algo.sapo_temperature_neg (1.05) otherwise, with the paper's per-sequence token mean. epsilon is "
        "unused. Differs from GRPO only with num_iterations > 1 or asynchronous generation.", objective="sapo"),
    "luspo": Preset(
        "grpo", "group", "seq_mean_token_sum", "sequence", 2e-3, 2.5e-3, False,
        "LUSPO (arXiv:2602.05261): GSPO with each sequence's loss scaled by its length (token sums, then "
        "the mean over sequences), which removes GSPO's bias against long responses; clip 2e-3/2.5e-3 as "
        "in the paper's section 5.1 (TRL's paper index). As TRL's loss_type='luspo'."),
}
