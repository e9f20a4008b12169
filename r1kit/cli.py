"""Command line: ``r1kit train|sft|eval [RECIPE] [a.b=c ...]``, ``r1kit report RUN_DIR...``, ``r1kit serve-gen|serve-ref MODEL``.

With no recipe, the built-in tiny world runs: the config defaults are its recipe.
An error the user can fix (a recipe, a flag, a file, a reward function, a server, the disk) is one line on stderr
with exit code 2 (the input) or 1 (the environment, a user's function at run time); anything else is a bug and
keeps its traceback. R1KIT_TRACEBACK=1 shows the traceback of the one-line errors too (for a bug report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

USAGE = """examples:
  r1kit train                                   GRPO on the built-in tiny world (CPU, minutes)
  r1kit train recipes/tiny/grpo.yaml train.max_steps=50 name=short
  r1kit sft recipes/tiny/sft.yaml               rebuild the cold-start checkpoint
  r1kit data gsm8k --split train --traces gsm8k-sft.jsonl    check a data source; GSM8K -> Tiny-R1 SFT samples
  r1kit eval runs/tiny-grpo/final --n 4         greedy and sampled pass@1 on the held-out split
  r1kit eval Qwen/Qwen2.5-Math-1.5B-Instruct --benchmark math500 --instruction boxed --n 4 \\
      --temperature 0.6 --top-p 0.95 --max-new-tokens 4096    pass@1, pass@k, maj@k (shipped data, offline)
  r1kit report runs/tiny-grpo                   runs/tiny-grpo/report.html: charts, phase times, samples
  r1kit report runs/a runs/b                    both runs' curves overlaid: runs/compare-a-b/report.html
  r1kit eval MODEL --benchmark gpqa_diamond     multiple choice (GPQA from the hub; or --benchmark mc.jsonl)
  r1kit eval BASE --adapter runs/x/final        base model + a saved LoRA adapter
  r1kit chat builtin:tiny-sft --system tiny_r1  chat in the terminal (/reset, /exit); --prompt TEXT for scripts
  r1kit serve-gen builtin:tiny-sft --port 8000  vLLM generation server with a weight-update route
  r1kit serve-ref builtin:tiny-sft --port 8001  reference-model server (per-token logprobs)
  r1kit generate generate.n=8 generate.keep=correct generate.output=traces.jsonl --limit 500
                                                distillation data: R1-protocol samples, correct ones kept (resumable)
  r1kit generate MODEL_RECIPE.yaml --benchmark math500 generate.output=math.parquet --push-to-hub you/math-traces
  r1kit train|sft ... --push-to-hub you/model [--private]    upload final/ to the hub when the run ends
  R1KIT_TRACEBACK=1 r1kit ...                   an error's whole traceback instead of its one line
  r1kit doctor [--json]                         versions, devices, and which engines/strategies/features run here
  r1kit launch --config_file recipes/accelerate/zero3.yaml --num_processes 8 train RECIPE
                                                accelerate launch, a failed run ending in one line naming the rank
"""


def _split_recipe(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a recipe path unless it is an a.b=c override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load(args: list[str], base=None):
    from r1kit.recipe import load_recipe

    recipe, overrides = _split_recipe(args)
    return load_recipe(recipe, overrides, base=base)


def cmd_train(args: list[str]) -> None:
    from r1kit.trackers import require_log_packages
    from r1kit.trainer import train

    args, push = _push_flags(args)
    cfg = _load(args)
    require_log_packages(cfg.log)  # a missing tracker package or matplotlib fails now, not after training
    started, metrics = time.time(), cfg.run_dir / "metrics.jsonl"
    try:
        train(cfg)
    except BaseException:  # stopped (Ctrl-C) or crashed: still show what was logged, then stop as before
        main_process = os.environ.get("RANK", "0") == "0"  # under a launcher, one process writes
        if cfg.log.report and main_process and metrics.is_file() and metrics.stat().st_mtime >= started:
            from r1kit.report import write_report

            print(f"r1kit train: stopped; report of the steps so far: {write_report(cfg.run_dir)}", file=sys.stderr)
        raise
    _push_result(push, cfg.run_dir / "final", "model")


def cmd_sft(args: list[str]) -> None:
    from r1kit.config import Config, ModelCfg
    from r1kit.sft import run_sft

    args, push = _push_flags(args)
    # without a recipe, SFT starts the tiny world from a fresh model (recipes/tiny/sft.yaml)
    cfg = _load(args, base=Config(name="tiny-sft", model=ModelCfg(name_or_path="builtin:tiny-init")))
    summary = run_sft(cfg)
    if os.environ.get("RANK", "0") == "0":  # under a launcher, one process prints
        print(json.dumps(summary, indent=2))
    _push_result(push, cfg.run_dir / "final", "model")


def cmd_eval(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="r1kit eval", description="Greedy and sampled pass@1, pass@k and maj@k on a benchmark or held-out split.")
    parser.add_argument("model", nargs="?", default=None, help="model dir or hub name (default: the recipe's model)")
    parser.add_argument("--recipe", default=None, help="recipe whose data/eval sections are the defaults")
    parser.add_argument("--benchmark", default=None,
                        help="gsm8k, math500, aime24, aime25, amc23 (shipped, offline) or tiny; gpqa_diamond, "
                             "gpqa_main, gpqa_extended (hub, gated); or a .jsonl/.parquet/.csv file (multiple choice "
                             "when it has GPQA's or question/choices/answer columns); default: the recipe's data")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter directory to apply to MODEL")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--n", type=int, default=None, help="samples per problem for pass@k / maj@k (0: greedy only)")
    parser.add_argument("--k", type=int, nargs="+", default=None, help="k values (default: powers of 2 up to n, and n)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: the recipe's seed)")
    parser.add_argument("--system-prompt", default=None, help="none, r1, tiny_r1, or literal text")
    parser.add_argument("--instruction", default=None, help="none, boxed, or literal text appended to each problem")
    parser.add_argument("--prompt-format", choices=["chat", "plain"], default=None)
    parser.add_argument("--extract", default=None,
                        help="answer extraction: auto, tag, boxed, hash, last_number, choice, ...")
    parser.add_argument("--checker", default=None, choices=["auto", "numeric", "math", "multiple_choice"],
                        help="answer comparison (default: eval.checker; auto: the benchmark's own)")
    parser.add_argument("--output", default=None, help="per-problem jsonl (default: <output_dir>/eval/<model>-<benchmark>.jsonl)")
    parser.add_argument("overrides", nargs="*", help="a.b=c recipe overrides")
    ns = parser.parse_intermixed_args(argv)
    if ns.model and "=" in ns.model:  # no model given: the first a.b=c override landed in its place
        ns.overrides, ns.model = [ns.model, *ns.overrides], None

    from r1kit.recipe import load_recipe
    from r1kit.data.benchmarks import checker_for, extract_for
    from r1kit.data.sources import load_data
    from r1kit.data.templates import prompt_ids
    from r1kit.evaluate import evaluate
    from r1kit.evaluate.benchmarks import benchmark_data, benchmark_name, summary_table, write_items
    from r1kit.logging import console, quiet_library_progress
    from r1kit.model_files import context_overflow
    from r1kit.models import load_inference_model, load_tokenizer, pick_device
    from r1kit.run import check_tool_template, make_engine, prompt_tools

    quiet_library_progress()

    cfg = load_recipe(ns.recipe, ns.overrides)
    d, e = cfg.data, cfg.eval
    _check_eval_flags(ns, e)  # before any model is loaded
    d = dataclasses.replace(d, **{k: v for k, v in (("system_prompt", ns.system_prompt), ("instruction", ns.instruction),
                                                     ("prompt_format", ns.prompt_format)) if v is not None})
    if ns.benchmark:
        rows, source, origin = benchmark_data(ns.benchmark, d, ns.limit)
    else:
        rows, report = load_data(d, d.eval_split, size=ns.limit or d.eval_size)
        source, origin = d.source, report.summary()
    checker = checker_for(source, ns.checker or e.checker)  # as during training: a benchmark's own, unless set
    extract = extract_for(checker, _pick(ns.extract, e.extract))  # multiple choice: the option letter
    model_path = ns.model or cfg.model.name_or_path
    cfg.model = dataclasses.replace(cfg.model, name_or_path=model_path)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code, cfg.model.gguf_file)
    check_tool_template(cfg, tokenizer)  # with tools: the template reads the call format (before the model loads)
    model = load_inference_model(cfg.model, tokenizer, cfg.seed, ns.adapter).to(pick_device(cfg.model.device))
    max_new_tokens = _pick(ns.max_new_tokens, e.max_new_tokens)
    longest = max((len(prompt_ids(tokenizer, row["question"], d)) for row in rows), default=0)
    overflow = context_overflow(model, longest, max_new_tokens, "--max-new-tokens (eval.max_new_tokens)", source)
    if overflow:  # evaluation still runs (positions past the context extrapolate), but the numbers may suffer
        console.print(f"[yellow]warning: {overflow}[/]")
    n = e.n_samples if ns.n is None else ns.n
    engine = make_engine(cfg, model, tokenizer)  # rollout.engine=vllm (or server) evaluates with vLLM
    try:
        result = evaluate(
            engine, tokenizer, rows, system_prompt=d.system_prompt, instruction=d.instruction,
            prompt_format=d.prompt_format, n_samples=n, temperature=_pick(ns.temperature, e.temperature),
            top_p=_pick(ns.top_p, e.top_p), max_new_tokens=max_new_tokens,
            seed=_pick(ns.seed, cfg.seed), extract=extract, checker=checker, ks=ns.k, tools=prompt_tools(cfg))
    finally:
        engine.close()
    name = benchmark_name(ns.benchmark) if ns.benchmark else d.source.replace("/", "_")
    model_name = _slug(model_path) + (f"+{_slug(ns.adapter)}" if ns.adapter else "")  # base+adapter: its own file
    output = Path(ns.output) if ns.output else cfg.run_dir.parent / "eval" / f"{model_name}-{name}.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_items(output, result.items)
    summary = {"model": model_path, "engine": cfg.rollout.engine, "benchmark": name, "data": origin,
               "checker": checker, **({"adapter": ns.adapter} if ns.adapter else {}), **result.summary()}
    output.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    console.print(summary_table(f"{model_path} on {name}", result.summary()))
    console.print(f"per-problem results: {output}")
    _eval_report(output, summary, result.items)
    print(json.dumps(summary, indent=2))


def _check_eval_flags(ns: argparse.Namespace, e) -> None:
    """`r1kit eval`'s flags in range, through the sampling check every command shares (r1kit.types)."""
    from r1kit.config import ConfigError
    from r1kit.types import FLAG_NAMES, sampling_problems

    names = {key: flag if getattr(ns, key, None) is not None else f"eval.{key}" for key, flag in FLAG_NAMES.items()}
    problems = sampling_problems(names, _pick(ns.temperature, e.temperature), _pick(ns.top_p, e.top_p), 0,
                                 _pick(ns.max_new_tokens, e.max_new_tokens))
    problems += [message for ok, message in (
        (ns.limit is None or ns.limit >= 1, f"--limit must be >= 1 (the first N problems), got {ns.limit}"),
        (ns.n is None or ns.n >= 0, f"--n must be >= 0 (samples per problem; 0: greedy only), got {ns.n}"),
        (all(k >= 1 for k in ns.k or []), f"--k values must be >= 1, got {ns.k}")) if not ok]
    if problems:
        raise ConfigError("; ".join(problems))


def _eval_report(output: Path, summary: dict, items: list[dict]) -> None:
    """The eval's page beside its jsonl; without matplotlib the results above stand and the page is skipped, saying why."""
    from r1kit.logging import console
    from r1kit.report.evaluation import write_eval_report

    try:
        console.print(f"report: {write_eval_report(output, summary, items)}")
    except ImportError as e:
        console.print(f"[yellow]report: not written ({e})[/]")


def cmd_report(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="r1kit report", description="HTML report with charts of one run, or of several runs overlaid.")
    parser.add_argument("run_dirs", nargs="+", help="run directories (runs/<name>)")
    parser.add_argument("--output", default=None,
                        help="comparison directory for several runs (default: compare-A-B beside the first run)")
    ns = parser.parse_args(argv)
    from r1kit.report import write_comparison, write_report

    if len(ns.run_dirs) == 1 and ns.output is None:
        print(f"report: {write_report(ns.run_dirs[0])}")
    else:
        print(f"comparison report: {write_comparison(ns.run_dirs, ns.output)}")


def _pick(flag, default):
    return default if flag is None else flag


def _slug(model_path: str) -> str:
    """A file-name-safe short name for a model: its last path component(s)."""
    parts = [p for p in model_path.replace(":", "/").split("/") if p not in ("", ".", "..")]
    return "-".join(parts[-2:]) or "model"


def cmd_data(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="r1kit data", description="Check a data source: rows read, kept, skipped and why.")
    parser.add_argument("source", help="gsm8k, math500, aime24, aime25, amc23, tiny_arith, reasoning_gym:<task>, a file, "
                                       "or a hub name")
    parser.add_argument("--split", default=None, help="split to read (default: test for benchmarks, else train)")
    parser.add_argument("--question", default=None, help="column holding the question (files, hub)")
    parser.add_argument("--answer", default=None, help="column holding the answer (files, hub)")
    parser.add_argument("--skip-invalid", action="store_true", help="skip and count unusable rows instead of failing")
    parser.add_argument("--traces", default=None,
                        help="write Tiny-R1 SFT samples (messages jsonl) of GSM8K-style solutions ('... #### N') here")
    parser.add_argument("--tag-style", choices=["reasoning", "think"], default="reasoning", help="reasoning tag of --traces")
    parser.add_argument("overrides", nargs="*", help="a.b=c recipe overrides (e.g. data.system_prompt=tiny_r1)")
    ns = parser.parse_intermixed_args(argv)

    from r1kit.config import ColumnsCfg
    from r1kit.recipe import load_recipe
    from r1kit.data.benchmarks import BENCHMARKS
    from r1kit.data.sources import DataError, load_data

    cfg = load_recipe(None, [f"data.source={ns.source}", *ns.overrides])
    columns = ColumnsCfg(ns.question or cfg.data.columns.question, ns.answer or cfg.data.columns.answer)
    data = dataclasses.replace(cfg.data, columns=columns, skip_invalid=ns.skip_invalid or cfg.data.skip_invalid)
    split = ns.split or ("test" if ns.source in BENCHMARKS else "train")
    rows, report = load_data(data, split)
    print(report.summary())
    print(json.dumps({k: rows[0][k] for k in ("question", "answer")}, ensure_ascii=False, indent=2))
    if ns.traces:
        from r1kit.data.traces import gsm8k_sft_samples

        system = data.system_prompt if data.system_prompt != "none" else "tiny_r1"
        try:
            samples = gsm8k_sft_samples(rows, system, ns.tag_style, data.instruction)
        except ValueError as e:  # not GSM8K-style solutions
            raise DataError(f"--traces: {e}") from None
        with open(ns.traces, "w") as f:
            for sample in samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        print(f"wrote {len(samples)} SFT samples to {ns.traces} (train on them with sft.source={ns.traces})")


def cmd_chat(argv: list[str]) -> None:
    from r1kit.chat import main as chat

    chat(argv)


def _server_parser(prog: str, description: str, port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("model", help="model dir, hub name, or builtin:tiny-sft")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--token-env", default="R1KIT_SERVICE_TOKEN",
                        help="environment variable holding a bearer token that callers must send (unset: no token)")
    parser.add_argument("--served-model-name", default=None, help="name clients ask for (default: MODEL as given)")
    return parser


def cmd_serve_gen(argv: list[str]) -> None:
    parser = _server_parser("r1kit serve-gen", "vLLM's OpenAI-compatible server plus /r1kit/update_weights. "
                            "Further arguments after -- go to vLLM (e.g. -- --gpu-memory-utilization 0.8).", 8000)
    parser.add_argument("--kv-cache-gb", type=float, default=2.0,
                        help="CPU build: KV cache in GiB (VLLM_CPU_KVCACHE_SPACE, unless already set); GPU: use "
                             "vLLM's --gpu-memory-utilization / --kv-cache-memory-bytes after --")
    parser.add_argument("--weights-root", default=None,
                        help='the only directory tree {"path": DIR} weight updates may name (the trainer\'s '
                             "services.shared_dir); unset: only uploaded weights are accepted")
    parser.add_argument("--max-upload-gb", type=float, default=64.0, help="largest weights upload accepted (GiB)")
    own, _, extra = _split_double_dash(argv)
    ns = parser.parse_args(own)
    from r1kit.serve.generation import main as serve

    try:
        serve(ns.model, ns.host, ns.port, ns.token_env, ns.kv_cache_gb, extra, ns.served_model_name,
              ns.weights_root, ns.max_upload_gb)
    except ImportError as e:  # no vLLM here: say so and how to install it, without a traceback
        print(f"r1kit serve-gen: error: {e}", file=sys.stderr)
        sys.exit(2)


def cmd_serve_ref(argv: list[str]) -> None:
    parser = _server_parser("r1kit serve-ref", "Reference-model server: per-token logprobs of given completions.", 8001)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--micro-batch-size", type=int, default=64, help="completions per forward pass")
    from r1kit.serve.reference import Limits, load_service, make_server

    for field in dataclasses.fields(Limits):  # the request bounds: --max-rows, --max-row-tokens, ...
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default,
                            help=f"request bound (default {field.default}); see r1kit/serve/reference.py")
    ns = parser.parse_args(argv)
    import os

    limits = Limits(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(Limits)})
    service = load_service(ns.model, ns.dtype, ns.device, ns.micro_batch_size, ns.served_model_name, limits=limits)
    token = os.environ.get(ns.token_env) or None
    server = make_server(service, ns.host, ns.port, token)
    host, port = server.server_address[:2]
    print(f"r1kit serve-ref: serving {service.name!r} on http://{host}:{port} "
          f"({'token required' if token else 'no token: anyone who can reach the port may call it'})",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def cmd_generate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="r1kit generate", description="Distillation data: n samples per prompt (R1 protocol: T=0.6, top_p 0.95), "
        "scored and optionally filtered, as chat-messages rows for r1kit sft. Resumable: rerun the same command.")
    parser.add_argument("args", nargs="*", metavar="[RECIPE] a.b=c",
                        help="recipe and overrides: generate.n, generate.keep=correct, generate.output=x.jsonl, ...")
    parser.add_argument("--benchmark", default=None, help="prompts of a shipped benchmark's test split (gsm8k, math500, "
                                                          "aime24, aime25, amc23) or tiny; default: data.source")
    parser.add_argument("--limit", type=int, default=None, help="the first N prompts (generate.limit)")
    parser.add_argument("--output", default=None, help="a .jsonl or .parquet file (generate.output)")
    _push_arguments(parser, "the output file, to a dataset repo")
    ns = parser.parse_intermixed_args(argv)
    flags = [f"generate.{key}={value}" for key, value in (("limit", ns.limit), ("output", ns.output)) if value is not None]
    cfg = _load([*ns.args, *flags])
    if ns.push_to_hub:
        from r1kit.hub import check_can_push

        check_can_push(ns.push_to_hub)
    from r1kit.generate import generate_data

    try:
        summary = generate_data(cfg, ns.benchmark)
    except KeyboardInterrupt:
        print("\nr1kit generate: interrupted; every finished prompt's rows are on disk: rerun the same command to "
              "continue", file=sys.stderr)
        sys.exit(130)
    _push_result((ns.push_to_hub, ns.private), Path(summary["output"]), "dataset")


def cmd_doctor(argv: list[str]) -> None:
    from r1kit.doctor import main as doctor

    doctor(argv)


def cmd_launch(argv: list[str]) -> None:
    from r1kit.launch import launch

    launch(argv)


def _push_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help=f"upload {what} (huggingface_hub)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def _push_flags(args: list[str]) -> tuple[list[str], tuple[str | None, bool]]:
    """Take --push-to-hub REPO (or =REPO) and --private out of train/sft arguments, before the recipe and
    overrides are read; a push that cannot succeed (no token, offline, bad repo id) fails now, before the work."""
    parser = argparse.ArgumentParser(prog="r1kit", add_help=False)
    _push_arguments(parser, "the final model")
    ns, rest = parser.parse_known_args(args)
    if ns.private and not ns.push_to_hub:
        from r1kit.config import ConfigError

        raise ConfigError("--private only applies with --push-to-hub REPO")
    if ns.push_to_hub:
        from r1kit.hub import check_can_push

        check_can_push(ns.push_to_hub)
    return rest, (ns.push_to_hub, ns.private)


def _push_result(push: tuple[str | None, bool], path: Path, repo_type: str) -> None:
    repo_id, private = push
    if not repo_id or os.environ.get("RANK", "0") != "0":  # under a launcher, the main process pushes once
        return
    from r1kit.hub import push_to_hub

    print(f"pushed {path} to {push_to_hub(path, repo_id, repo_type, private)}")


def _split_double_dash(argv: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], "--", argv[i + 1:]
    return argv, "", []


COMMANDS = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval, "data": cmd_data, "report": cmd_report,
            "serve-gen": cmd_serve_gen, "serve-ref": cmd_serve_ref}
COMMANDS["chat"] = cmd_chat
COMMANDS["generate"] = cmd_generate
COMMANDS["doctor"] = cmd_doctor
COMMANDS["launch"] = cmd_launch


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: r1kit {train,sft,eval,data,generate} [RECIPE] [a.b=c ...] | r1kit report RUN_DIR [RUN_DIR ...] | "
              "r1kit {serve-gen,serve-ref,chat} MODEL [options] | r1kit doctor [--json] | "
              "r1kit launch [accelerate options] {train,sft,...} ...\n\n"
              + USAGE)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "doctor":  # before the imports below: it reports a torch that fails to import, it does not die of it
        cmd_doctor(argv[1:])
        return 0
    from r1kit.rundir import RunStopped

    try:
        COMMANDS[argv[0]](argv[1:])
        if "accelerate" in sys.modules:  # a command that may have joined a process group (r1kit.distributed)
            from r1kit.distributed import leave_process_group

            leave_process_group()
    except RunStopped as e:  # SIGINT / SIGTERM: a checkpoint was written; say how to go on
        print(f"r1kit {argv[0]}: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        code = _one_line_exit_code(e)
        if code is None or os.environ.get("R1KIT_TRACEBACK", "0") not in ("", "0"):
            raise  # a bug (or R1KIT_TRACEBACK=1): the whole traceback
        print(f"r1kit {argv[0]}: error: {_one_line(e)}", file=sys.stderr)
        return code
    return 0


def _one_line_errors() -> list[tuple[tuple[type, ...], int]]:
    """The errors a user can cause or fix, each shown as one line (exit code 2: the input; 1: the environment or
    a user's function at run time). Anything else is a bug in r1kit and keeps its traceback."""
    from r1kit.checkpoint import CheckpointError
    from r1kit.config import ConfigError
    from r1kit.data.sources import DataError
    from r1kit.hub import HubError
    from r1kit.launch import LaunchFailed
    from r1kit.rewards.registry import RewardError
    from r1kit.rollout.http import ServiceError
    from r1kit.rundir import NonFiniteError, RunCollapsed

    return [((NonFiniteError, RunCollapsed), 1),  # training stopped: the gradient blew up, or the learning signal is gone
            ((ConfigError, DataError, FileNotFoundError, FileExistsError, CheckpointError), 2),
            ((OSError,), 1),  # read-only or full disk, permissions: the environment, not a bug; the line says which
            ((ServiceError, ImportError), 1),  # a server that stopped answering; an engine that is not installed
            ((HubError,), 1),
            ((LaunchFailed,), 1),  # r1kit launch: a process failed; its own line is above  # --push-to-hub: no token, offline, no access; the result stays on disk
            ((RewardError,), 1)]  # a user's reward raised or broke TRL's contract: the line names it and where


def _one_line_exit_code(e: BaseException) -> int | None:
    """The exit code of an error shown as one line, or None for a bug (shown with its traceback)."""
    return next((code for classes, code in _one_line_errors() if isinstance(e, classes)), None)


def _one_line(e: BaseException) -> str:
    """The error's message on one line (a multi-line message from a library is joined)."""
    return " ".join(str(e).split("\n")).strip() or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
