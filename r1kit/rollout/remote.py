"""A vLLM server as the Engine (``rollout.engine: server``): generation on its own GPU or node.

The server is ``r1kit serve-gen MODEL`` (r1kit/serve/generation.py) at ``services.generation_url``.
Per step:

- ``generate``: one /v1/completions request per prompt (token ids in, ``n`` samples, sampled-token
  logprobs, token ids back), sent concurrently so the server batches them. Each prompt gets
  ``sampling.prompt_seed(i)``, as the colocated engine does.
- ``update_weights``: with a LoRA policy and ``model.lora.sync`` adapter, the adapter alone goes to
  /r1kit/load_lora_adapter under a new name per version, which ``generate`` then asks for as its
  ``model`` (the base weights go once, as below, and again when the server reports another weights
  version: r1kit.rollout.lora_sync). Otherwise the new weights go to the server
  (``services.weight_transfer``): ``http`` POSTs the safetensors bytes (works across nodes, no
  shared disk), ``path`` writes them to
  ``services.shared_dir`` and sends the path (a shared filesystem: one copy less), ``collective``
  broadcasts them in a process group of this process and the server's workers, HTTP keeping the
  control (r1kit.rollout.transport; docs/weight-sync.md). The server reloads them in place and
  resets its prefix cache.

A push goes in parts of at most ``services.weight_bucket_mb`` (whole decoder layers each, see
r1kit.rollout.weights): every part is a POST with ``?update=ID&part=I&parts=N``, the server
reloads each part in place and resets its prefix cache once, after the last. Under ZeRO-3 and
FSDP2 every process runs the export (the gathers are collective, one layer at a time) and only
the main process posts, so neither side ever holds more than one part beyond its own weights.

Every request has a timeout and bounded retries with backoff (r1kit.rollout.http); then the run
stops with a ServiceError naming the server and URL. Checkpoints are written atomically, so the
last one stays intact and ``train.resume_from=latest`` continues once the server is back: the
engine pushes the resumed policy's weights to the server when it is built.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from r1kit.rollout import lora_sync
from r1kit.rollout.http import ServiceClient, ServiceError
from r1kit.rollout.transport import CollectiveSender
from r1kit.rollout.weights import LOCAL, Gatherer, export_buckets, save_weights, weights_bytes
from r1kit.types import Completion, SamplingParams

START_HINT = "Start it with `r1kit serve-gen MODEL` (see docs/engines.md, 'Generation and reference servers')."


class RemoteEngine:
    def __init__(self, client: ServiceClient, model_name: str, tokenizer, weight_transfer: str = "http",
                 shared_dir: str | None = None, stop_ids: set[int] | None = None, max_concurrency: int = 64,
                 pushes: bool = True, barrier=None, bucket_mb: float = 512.0, gatherer: Gatherer = LOCAL,
                 transport_address: str | None = None, lora_sync_mode: str = "auto", policy=None):
        """pushes: this process sends the weights (with several training processes, only the main one
        does); barrier: called after a push so no process samples from the old weights; bucket_mb: the
        largest part of a push; gatherer: how sharded weights are made whole (collective: every process
        exports, see r1kit.distributed.weights_gatherer); transport_address: weight_transfer=collective,
        "host[:port]" the server's workers reach this process at (None: found, free port); lora_sync_mode:
        model.lora.sync for a LoRA `policy` (None: no LoRA)."""
        self.client = client
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.weight_transfer = weight_transfer
        self.shared_dir = shared_dir
        self.stop_ids = sorted(stop_ids or {tokenizer.eos_token_id})
        self.max_concurrency = max_concurrency
        self.pushes, self.barrier = pushes, barrier
        self.bucket_bytes, self.gatherer = int(bucket_mb * 2**20), gatherer
        self.sync_seconds: list[float] = []
        self.sync_bytes: list[int] = []  # what each update_weights call sent to the server (this process)
        self.sender = CollectiveSender(client, transport_address, client.timeout_s) \
            if weight_transfer == "collective" and pushes else None
        info = client.get("/r1kit/info")
        if info.get("model") != model_name:
            raise ServiceError(f"generation server at {client.url} serves model {info.get('model')!r}, not "
                               f"{model_name!r} (start it with `r1kit serve-gen {model_name}`, or --served-model-name)")
        if info.get("logprobs_mode") != "processed_logprobs":
            raise ServiceError(f"generation server at {client.url} reports logprobs_mode {info.get('logprobs_mode')!r};"
                               " r1kit needs processed_logprobs (start it with `r1kit serve-gen`)")
        adapter = lora_sync.adapter_config(policy) if policy is not None else None
        self.lora_sync = lora_sync.resolve(
            lora_sync_mode, adapter, f"the generation server at {client.url}",
            load_in_4bit=adapter is not None and lora_sync.quantized(policy),
            server_max_rank=info.get("max_lora_rank"), server_lora=info.get("max_lora_rank") is not None)
        self.adapter_name: str | None = None  # what generation asks for ("model"), once an adapter is loaded
        self.adapter_versions = 0
        self.tag = uuid.uuid4().hex[:8]  # adapter names differ between runs sharing a server
        self.base_version: int | None = None  # the server's weights_version after this engine's base push

    # ------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        greedy = sampling.temperature == 0
        base = {"model": self.adapter_name or self.model_name, "n": n, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": 1.0 if greedy else sampling.top_p,
                "top_k": 0 if greedy else sampling.top_k, "logprobs": 0, "return_token_ids": True,
                "stop_token_ids": self.stop_ids, "skip_special_tokens": False}

        def one(i: int) -> list[Completion]:
            payload = {**base, "prompt": list(prompts[i])}
            if sampling.seed is not None:
                payload["seed"] = sampling.prompt_seed(i)
            return self._parse(i, n, self.client.post("/v1/completions", payload))

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(prompts)))) as pool:
            groups = list(pool.map(one, range(len(prompts))))
        return [c for group in groups for c in group]

    def _parse(self, prompt_index: int, n: int, answer: dict) -> list[Completion]:
        choices = sorted(answer.get("choices") or [], key=lambda c: c["index"])
        if len(choices) != n:
            raise ServiceError(f"generation server at {self.client.url} returned {len(choices)} choices, asked for {n}")
        out = []
        for choice in choices:
            tokens = choice.get("token_ids")
            logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
            if tokens is None or logprobs is None or len(tokens) != len(logprobs):
                raise ServiceError(f"generation server at {self.client.url} returned no token ids or logprobs "
                                   "(is it `r1kit serve-gen`, vLLM >= 0.10?)")
            finish = "stop" if choice.get("finish_reason") == "stop" else "length"
            out.append(Completion(prompt_index=prompt_index, token_ids=list(tokens),
                                  text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                                  finish_reason=finish, logprobs=[float(x) for x in logprobs]))
        return out

    # ------------------------------------------------------------ weights

    def update_weights(self, model) -> None:
        """Push `model`'s weights in parts (the server reloads each in place and resets its prefix cache once);
        with model.lora.sync adapter, the adapter alone, after the base weights when the server lacks them."""
        start = time.perf_counter()
        if self.lora_sync == "adapter":
            sent = self._update_adapter(model)
        else:
            sent = self._push_weights(model, merge_lora=True)[0]
        if self.barrier is not None:
            self.barrier()
        if self.lora_sync == "adapter" and not self.pushes:  # the main process named it: ask the server
            self.adapter_name = self.client.get("/r1kit/info").get("adapter")
        self.sync_bytes.append(sent)
        self.sync_seconds.append(time.perf_counter() - start)

    def _update_adapter(self, model) -> int:
        """Base weights when the server's weights_version is not the one this engine's base push left (first
        sync, restart, another writer), then the adapter under a new name. Nothing is merged."""
        if not self.pushes:
            return 0
        sent = 0
        if self.base_version is None or self.client.get("/r1kit/info").get("weights_version") != self.base_version:
            sent, self.base_version = self._push_weights(model, merge_lora=False)
        body = lora_sync.adapter_bytes(*lora_sync.export_adapter(model))
        self.adapter_versions += 1
        name = f"policy-{self.tag}-v{self.adapter_versions}"
        answer = self.client.post(f"/r1kit/load_lora_adapter?name={name}", body)
        if answer.get("adapter") != name:
            raise ServiceError(f"adapter push to the generation server at {self.client.url} failed: {answer}")
        self.adapter_name = name
        return sent + len(body)

    def _push_weights(self, model, merge_lora: bool) -> tuple[int, int | None]:
        """(bytes sent, the server's weights_version after it) for one full-weight update in parts."""
        sent, version = 0, None
        if self.sender is not None:
            self.sender.begin()
        if self.pushes or self.gatherer.collective:
            update = uuid.uuid4().hex
            for part, parts, bucket in export_buckets(model, self.bucket_bytes, self.gatherer, keep=self.pushes,
                                                      merge_lora=merge_lora):
                if self.sender is not None:  # every rank has finished this bucket's gathers: nothing interleaves
                    self.sender.send(bucket, part, parts)
                    sent += sum(t.numel() * t.element_size() for t in bucket.values())
                elif self.pushes:
                    query = f"?update={update}&part={part}&parts={parts}" if parts > 1 else ""
                    size, answer = self._push(bucket, query)
                    sent, version = sent + size, answer.get("weights_version", version)
        if self.sender is not None:
            answer = self.sender.end()
            if "weights_version" not in answer:
                raise ServiceError(f"collective weight update of the generation server at {self.client.url} "
                                   "ended without a version")
            version = answer["weights_version"]
        return sent, version

    def _push(self, state: dict, query: str) -> tuple[int, dict]:
        """(bytes sent, the server's answer) for one part over HTTP."""
        route = "/r1kit/update_weights" + query
        if self.weight_transfer == "path":  # the server has read the file before it answers: reuse it per part
            directory = os.path.join(self.shared_dir, "r1kit-weights")
            size = save_weights(state, directory).stat().st_size
            answer = self.client.post(route, {"path": os.path.abspath(directory)})
        else:
            body = weights_bytes(state)
            size, answer = len(body), self.client.post(route, body)
        if "weights_version" not in answer and "part" not in answer:
            raise ServiceError(f"weight push to the generation server at {self.client.url} failed: {answer}")
        return size, answer

    def close(self) -> None:
        pass  # the server outlives the run; stop it where it was started
