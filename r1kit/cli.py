"""Command line: ``r1kit train|sft|eval [RECIPE] [a.b=c ...]``, ``r1kit serve-gen|serve-ref MODEL``.

With no recipe, the built-in tiny world runs: the config defaults are its recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

USAGE = """examples:
  r1kit train                                   GRPO on the built-in tiny world (CPU, minutes)
  r1kit train recipes/tiny/grpo.yaml train.max_steps=50 name=short
  r1kit sft recipes/tiny/sft.yaml               rebuild the cold-start checkpoint
  r1kit eval runs/tiny-grpo/final --n 4         greedy and sampled pass@1 on the held-out split
  r1kit serve-gen builtin:tiny-sft --port 8000  vLLM generation server with a weight-update route
  r1kit serve-ref builtin:tiny-sft --port 8001  reference-model server (per-token logprobs)
"""


def _split_recipe(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a recipe path unless it is an a.b=c override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def _load(args: list[str], base=None):
    from r1kit.config import load_recipe

    recipe, overrides = _split_recipe(args)
    return load_recipe(recipe, overrides, base=base)


def cmd_train(args: list[str]) -> None:
    from r1kit.trainer import train

    train(_load(args))


def cmd_sft(args: list[str]) -> None:
    from r1kit.config import Config, ModelCfg
    from r1kit.sft import run_sft

    # without a recipe, SFT starts the tiny world from a fresh model (recipes/tiny/sft.yaml)
    summary = run_sft(_load(args, base=Config(name="tiny-sft", model=ModelCfg(name_or_path="builtin:tiny-init"))))
    print(json.dumps(summary, indent=2))


def cmd_eval(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="r1kit eval", description="Greedy and sampled pass@1 on held-out problems.")
    parser.add_argument("model", nargs="?", default=None, help="model dir or hub name (default: the recipe's model)")
    parser.add_argument("--recipe", default=None, help="recipe whose data section says what to evaluate on")
    parser.add_argument("--n", type=int, default=0, help="samples per problem for sampled pass@1 (0: greedy only)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--output", default=None, help="write per-problem results to this jsonl file")
    parser.add_argument("overrides", nargs="*", help="a.b=c recipe overrides")
    ns = parser.parse_intermixed_args(argv)

    from r1kit.config import load_recipe
    from r1kit.data.sources import load_rows
    from r1kit.evaluate import evaluate
    from r1kit.models import load_model, load_tokenizer, pick_device
    from r1kit.rollout.hf import HFEngine

    cfg = load_recipe(ns.recipe, ns.overrides)
    model_path = ns.model or cfg.model.name_or_path
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    model_cfg = dataclasses.replace(cfg.model, name_or_path=model_path)
    model = load_model(model_cfg, tokenizer, cfg.seed).to(pick_device(cfg.model.device))
    rows = load_rows(cfg.data, cfg.data.eval_split, size=cfg.data.eval_size)
    result = evaluate(HFEngine(model, tokenizer, cfg.rollout.generation_batch_size), tokenizer, rows,
                      system_prompt=cfg.data.system_prompt, n_samples=ns.n, temperature=ns.temperature,
                      max_new_tokens=ns.max_new_tokens or cfg.eval.max_new_tokens, seed=cfg.seed)
    if ns.output:
        with open(ns.output, "w") as f:
            for item in result.items:
                f.write(json.dumps(item) + "\n")
    print(json.dumps({"model": model_path, "split": cfg.data.eval_split, **result.summary()}, indent=2))


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
    own, _, extra = _split_double_dash(argv)
    ns = parser.parse_args(own)
    from r1kit.serve.generation import main as serve

    try:
        serve(ns.model, ns.host, ns.port, ns.token_env, ns.kv_cache_gb, extra, ns.served_model_name)
    except ImportError as e:  # no vLLM here: say so and how to install it, without a traceback
        print(f"r1kit serve-gen: error: {e}", file=sys.stderr)
        sys.exit(2)


def cmd_serve_ref(argv: list[str]) -> None:
    parser = _server_parser("r1kit serve-ref", "Reference-model server: per-token logprobs of given completions.", 8001)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--micro-batch-size", type=int, default=64, help="completions per forward pass")
    ns = parser.parse_args(argv)
    import os

    from r1kit.serve.reference import load_service, make_server

    service = load_service(ns.model, ns.dtype, ns.device, ns.micro_batch_size, ns.served_model_name)
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


def _split_double_dash(argv: list[str]) -> tuple[list[str], str, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], "--", argv[i + 1:]
    return argv, "", []


COMMANDS = {"train": cmd_train, "sft": cmd_sft, "eval": cmd_eval, "serve-gen": cmd_serve_gen,
            "serve-ref": cmd_serve_ref}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: r1kit {train,sft,eval} [RECIPE] [a.b=c ...] | r1kit {serve-gen,serve-ref} MODEL [options]\n\n"
              + USAGE)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from r1kit.config import ConfigError
    from r1kit.data.sources import DataError

    try:
        COMMANDS[argv[0]](argv[1:])
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as e:
        print(f"r1kit {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
