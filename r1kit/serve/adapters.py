"""serve-gen's LoRA adapter route (``model.lora.sync: adapter``, r1kit.rollout.lora_sync): the trainer
sends the adapter alone, a few MB, instead of merged weights.

  POST /r1kit/load_lora_adapter?name=NAME   body: one safetensors file (application/octet-stream) with
                              adapter_config.json in its metadata (lora_sync.adapter_bytes)
                           -> {"adapter": NAME, "lora_int_id": K, "tensors": T, "seconds": S}

The name follows vLLM's own ``/v1/load_lora_adapter`` (``lora_name``, which this server does not
open: it loads from a path on the server and needs VLLM_ALLOW_RUNTIME_LORA_UPDATING). The adapter is
written under the server's private upload directory, added to the engine (``add_lora``: vLLM loads
and validates it now, so a bad adapter fails the push) and registered with vLLM's OpenAI model list,
so ``/v1/completions`` with ``"model": NAME`` generates with it. The previous adapter is then
unregistered, removed from the engine (with generation paused: no request is using it) and deleted,
so the server holds one adapter. A name that is loaded already is answered, not loaded again (the
trainer names every version anew, so that is a retry). Loads hold the weight route's lock: they never interleave with a
weight push. The server needs ``--enable-lora --max-lora-rank R`` (vLLM's flags); /r1kit/info
reports ``max_lora_rank`` (null without LoRA) and the ``adapter`` loaded.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at run time.
import asyncio
import re
import shutil
import time
from pathlib import Path

from r1kit.rollout.lora_sync import ADAPTER_FILE, finish_upload
from r1kit.serve.generation import stream_to_file

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also a directory name: no separators, no leading dot


class AdapterError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class AdapterLoader:
    """The route's logic without FastAPI. engine: vLLM's engine client; models_of(): vLLM's
    OpenAIServingModels (set up after the app); updater: the weight route's WeightUpdater (its lock);
    served_name: the base model's name (an adapter may not take it); max_upload_bytes: as the weight route."""

    def __init__(self, engine, models_of, updater, upload_dir: str, served_name: str, max_upload_bytes: int):
        self.engine, self.models_of, self.updater = engine, models_of, updater
        self.directory = Path(upload_dir) / "adapters"
        self.served_name, self.max_upload_bytes = served_name, max_upload_bytes
        lora = getattr(engine.vllm_config, "lora_config", None)
        self.max_lora_rank = lora.max_lora_rank if lora is not None else None
        self.current = None  # the LoRARequest of the adapter loaded last

    async def load(self, name, chunks, declared_bytes) -> dict:
        if self.max_lora_rank is None:
            raise AdapterError(400, "this server was started without LoRA: add `--enable-lora --max-lora-rank R` "
                                    "to `r1kit serve-gen`, or sync merged weights (model.lora.sync=merged)")
        if not isinstance(name, str) or not NAME.match(name) or name == self.served_name:
            raise AdapterError(400, "?name= must be 1-64 letters, digits, '.', '_' or '-', not starting with "
                                    "'.' and not the served model's name")
        if declared_bytes is not None and declared_bytes > self.max_upload_bytes:
            raise AdapterError(413, f"adapter body of {declared_bytes} bytes; this server takes at most "
                                    f"{self.max_upload_bytes} (--max-upload-gb)")
        start = time.perf_counter()
        async with self.updater.lock:
            if self.current is not None and self.current.lora_name == name:  # a client's retry: loaded already
                return {"adapter": name, "lora_int_id": self.current.lora_int_id, "repeated": True, "seconds": 0.0}
            target = self.directory / name
            try:
                await self._receive(chunks, target / ADAPTER_FILE)
                tensors = await asyncio.to_thread(finish_upload, target)
                request = await self._register(name, target)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            await self._drop(self.current)
            self.current = request
        return {"adapter": name, "lora_int_id": request.lora_int_id, "tensors": tensors,
                "seconds": time.perf_counter() - start}

    async def _receive(self, chunks, target: Path) -> None:
        """The body, streamed to `target` (never whole in memory), at most max_upload_bytes."""
        target.parent.mkdir(parents=True, exist_ok=True)
        await stream_to_file(chunks, target, self.max_upload_bytes, lambda: AdapterError(
            413, f"adapter body over {self.max_upload_bytes} bytes (--max-upload-gb)"))

    async def _register(self, name: str, path: Path):
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        models = self.models_of()
        answer = await models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=str(path)))
        if not isinstance(answer, str):  # vLLM's ErrorResponse: the adapter did not load (rank, targets, files)
            error = getattr(answer, "error", answer)
            raise AdapterError(400, f"vLLM refused adapter {name!r}: {getattr(error, 'message', error)}")
        return models.lora_requests[name]

    async def _drop(self, request) -> None:
        """Unregister `request`'s name, remove it from the engine (generation paused: no request holds it),
        delete its files."""
        if request is None:
            return
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        await self.models_of().unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=request.lora_name))
        await self.engine.pause_generation(mode="wait")
        try:
            await self.engine.remove_lora(request.lora_int_id)
        finally:
            await self.engine.resume_generation()
        shutil.rmtree(request.lora_path, ignore_errors=True)

    def info(self) -> dict:
        return {"max_lora_rank": self.max_lora_rank, "adapter": self.current.lora_name if self.current else None}


def add_route(router, loader_of) -> None:
    """POST /r1kit/load_lora_adapter on `router`; `loader_of(request)` gives the app's AdapterLoader."""
    from fastapi import HTTPException, Request

    @router.post("/r1kit/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        declared = request.headers.get("content-length", "")
        try:
            if not request.headers.get("content-type", "").startswith("application/octet-stream"):
                raise AdapterError(400, "send the adapter as an application/octet-stream safetensors body")
            return await loader_of(request).load(request.query_params.get("name"), request.stream(),
                                                 int(declared) if declared.isdigit() else None)
        except AdapterError as e:
            raise HTTPException(status_code=e.status, detail=str(e)) from None
        except ValueError as e:  # unpack_adapter: not an adapter upload
            raise HTTPException(status_code=400, detail=str(e)) from None
