"""The range of every numeric knob of the config tree, in one table (RANGES), checked at load.

Every int and float field of every dataclass in r1kit.config has a rule here (a test walks the tree and
fails on a field without one), so no number reaches training unchecked: a negative max_grad_norm that
would reverse the update, a learning rate no AdamW run survives, a probability above 1, a count below 0.
Floats must also be finite (NaN passes no comparison, inf passes ">= 0"). Rules that tie fields together
(epsilon_high >= epsilon, batch sizes that divide) stay in r1kit.config_checks.validate.

Commands that take the same knobs as flags (eval, chat, generate) check them with `range_problem`, so a
value is refused with the same words wherever it comes from:

    >>> range_problem("rollout.top_p", 1.5)
    'rollout.top_p must be in (0, 1], got 1.5'
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from r1kit.types import MIN_TEMPERATURE


@dataclass(frozen=True)
class Range:
    low: float | None = None  # None: no lower bound
    high: float | None = None  # None: no upper bound
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "a finite number"


def _number(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


COUNT = Range(0)  # 0 usually means "off" or "none"
POSITIVE_COUNT = Range(1)
PROBABILITY = Range(0, 1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FINITE = Range()
TEMPERATURE = Range(MIN_TEMPERATURE)  # the floor every command shares (r1kit.types): below it vLLM samples greedily
TOP_P = Range(0, 1, low_open=True)
# AdamW moves every weight by up to about lr per step: above 1 no model survives a single update
LEARNING_RATE = Range(0, 1, low_open=True)
SEED = Range(0, 2**32 - 1)  # numpy's and most samplers' seed limit

RANGES: dict[str, Range] = {
    "seed": SEED,
    "model.lora.r": POSITIVE_COUNT,
    "model.lora.alpha": POSITIVE_COUNT,
    "model.lora.dropout": Range(0, 1, high_open=True),
    "data.train_size": POSITIVE_COUNT,
    "data.eval_size": POSITIVE_COUNT,
    "data.task.seed": SEED,
    "data.task.num_operands": Range(2),  # one operation at least
    "data.task.max_operand": POSITIVE_COUNT,
    "rewards.weight": FINITE,
    "rollout.num_generations": Range(2),  # a group of one has no relative advantage
    "rollout.max_completion_length": POSITIVE_COUNT,
    "rollout.temperature": TEMPERATURE,
    "rollout.top_p": TOP_P,
    "rollout.top_k": COUNT,
    "rollout.generation_batch_size": POSITIVE_COUNT,
    "rollout.max_turns": POSITIVE_COUNT,
    "rollout.max_tool_calls": POSITIVE_COUNT,
    "rollout.asynchronous.lag": COUNT,  # 0: the synchronous run, generated in the worker
    "rollout.asynchronous.max_staleness": COUNT,
    "rollout.asynchronous.generator_threads": COUNT,  # 0: one per generator core
    "rollout.asynchronous.timeout_s": POSITIVE,
    "rollout.vllm.gpu_memory_utilization": TOP_P,
    "rollout.vllm.kv_cache_gb": NON_NEGATIVE,
    "rollout.vllm.max_model_len": POSITIVE_COUNT,
    "services.timeout_s": POSITIVE,
    "services.retries": COUNT,
    "services.backoff_s": NON_NEGATIVE,
    "services.weight_bucket_mb": POSITIVE,
    "algo.epsilon": Range(0, 1, low_open=True),  # the ratio is clipped below at 1 - epsilon
    "algo.epsilon_high": POSITIVE,
    "algo.max_sampling_rounds": COUNT,
    "algo.dual_clip": NON_NEGATIVE,  # 0 (off) or > 1: config_checks
    "algo.num_iterations": POSITIVE_COUNT,
    "algo.beta": NON_NEGATIVE,
    "algo.min_group_std": NON_NEGATIVE,
    "algo.entropy_coef": NON_NEGATIVE,
    "algo.is_cap": Range(1),
    "algo.is_min": PROBABILITY,
    "algo.off_policy_mask_threshold": NON_NEGATIVE,
    "algo.top_entropy_quantile": PROBABILITY,
    # > 0 both: config_checks, in one message for the pair
    "algo.sapo_temperature_pos": FINITE,
    "algo.sapo_temperature_neg": FINITE,
    "train.batch_size": POSITIVE_COUNT,
    "train.micro_batch_size": POSITIVE_COUNT,
    "train.max_steps": COUNT,
    "train.max_minutes": NON_NEGATIVE,
    "train.learning_rate": LEARNING_RATE,
    "train.warmup_steps": COUNT,
    "train.weight_decay": PROBABILITY,  # AdamW multiplies each weight by 1 - lr * weight_decay
    "train.adam_beta1": Range(0, 1, high_open=True),
    "train.adam_beta2": Range(0, 1, high_open=True),
    "train.max_grad_norm": NON_NEGATIVE,  # 0 disables clipping; a negative norm would reverse the update
    "train.save_every": COUNT,
    "train.keep_checkpoints": POSITIVE_COUNT,
    "train.max_nonfinite_steps": COUNT,
    "train.collapse_steps": COUNT,
    "sft.direct_fraction": PROBABILITY,
    "sft.large_from": COUNT,
    "sft.large_direct_fraction": PROBABILITY,
    "sft.tool_fraction": PROBABILITY,
    "sft.steps": COUNT,
    "sft.batch_size": POSITIVE_COUNT,
    "sft.learning_rate": LEARNING_RATE,
    "sft.warmup_steps": COUNT,
    "sft.weight_decay": PROBABILITY,
    "sft.eval_every": COUNT,
    "sft.max_seq_length": COUNT,
    "sft.micro_batch_size": COUNT,
    "sft.save_every": COUNT,
    "eval.every": COUNT,
    "eval.n_samples": COUNT,
    "eval.temperature": TEMPERATURE,
    "eval.top_p": TOP_P,
    "eval.max_new_tokens": POSITIVE_COUNT,
    "generate.n": POSITIVE_COUNT,
    "generate.temperature": TEMPERATURE,
    "generate.top_p": TOP_P,
    "generate.top_k": COUNT,
    "generate.max_new_tokens": POSITIVE_COUNT,
    "generate.limit": POSITIVE_COUNT,
    "generate.batch_size": POSITIVE_COUNT,
    "generate.min_reward": FINITE,
    "log.console_every": COUNT,
    "log.samples_every": COUNT,
}


def range_problem(key: str, value, nullable: bool = False) -> str | None:
    """What is wrong with `value` for the knob `key` (a RANGES key), or None when it is in range.
    None values pass: whether a knob may be null is its type's business (r1kit.config); `nullable`
    only adds "or null" to the message."""
    if value is None:
        return None
    rule, null = RANGES[key], " or null" if nullable else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key} must be a number {rule.describe()}{null}, got {value!r}"
    return None if rule.holds(value) else f"{key} must be {rule.describe()}{null}, got {value!r}"


def range_problems(cfg) -> list[str]:
    """Every out-of-range knob of `cfg` (r1kit.config.Config), the algorithm's preset values resolved."""
    tree = dataclasses.asdict(dataclasses.replace(cfg, algo=cfg.algo.resolved()))
    problems = []
    for key in RANGES:
        section, _, name = key.rpartition(".")
        if section == "rewards":
            for i, entry in enumerate(tree["rewards"]):
                if (message := range_problem(key, entry[name])) is not None:
                    problems.append(message.replace("rewards.", f"rewards[{i}].", 1))
            continue
        node, owner = tree, cfg
        for part in key.split("."):
            node = node[part]
            cls, owner = type(owner), getattr(owner, part)
        nullable = type(None) in typing.get_args(typing.get_type_hints(cls)[name])
        if (message := range_problem(key, node, nullable)) is not None:
            problems.append(message)
    return problems
