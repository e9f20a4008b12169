"""The Hugging Face engine: generation with the training model itself (CPU, or one small GPU).

It shares weights with the policy, so `update_weights` has nothing to copy. Sampling is r1kit's
own seeded sampler (r1kit.rollout.sampling): each completion has its own random stream, so results
do not depend on batch composition or process layout. Sampled-token logprobs are those of the
distribution each token was drawn from (after temperature / top-k / top-p); the trainer's own
logprobs at the same temperature agree with them to float rounding (tests/test_rollout.py).

Generation runs r1kit's decode loop (r1kit.rollout.decode: a group's prompt prefilled once, a KV
cache written in place, finished rows dropped), which samples exactly what `model.generate` with the
SeededSampler samples; `generate` itself runs only when sharded ranks must keep their forwards in
lockstep (synced_gpus). `generation_batch_size` bounds the rows decoded together (the KV cache is
N x (prompt + max_new_tokens) positions). For large models and long completions prefer a vLLM engine.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext

import torch
from transformers import GenerationConfig, LogitsProcessorList

from r1kit.rollout.decode import decode
from r1kit.rollout.kv_cache import left_pad
from r1kit.rollout.packed import packed_linears
from r1kit.rollout.sampling import SeededSampler, row_seed
from r1kit.types import Completion, SamplingParams


def eos_ids(model, tokenizer) -> set[int]:
    """Every token that ends a completion: the tokenizer's EOS and the model's generation EOS list."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if gen_eos is not None:
        ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return {i for i in ids if i is not None}


def transformers_forward(model) -> bool:
    """Whether `model` (unwrapped) runs the forward of one of transformers' own model classes, not remote
    code. The class that defines `forward` decides (FSDP2 wraps the model's class in one of its own)."""
    owner = next(c for c in type(model).__mro__ if "forward" in vars(c))
    return owner.__module__.startswith("transformers.models.")


@contextmanager
def only_recipe_knobs(model):
    """Hide the model's own generation_config while generating.

    `generate` fills every knob the passed config leaves unset from `model.generation_config`, so a
    checkpoint's repetition_penalty, no_repeat_ngram_size, top_k, ... would silently change the sampling
    distribution (and the logprobs the trainer compares with). Only the recipe's knobs apply.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class HFEngine:
    """Generation on the policy itself. Under sharded strategies (ZeRO-3, FSDP2) pass `gather`, a
    context manager factory that makes the full weights usable for the duration (r1kit.distributed),
    and `synced=True`: every rank then runs its forward passes in lockstep (transformers' synced_gpus),
    so a rank that finishes early still joins the others' collectives.

    Generation runs under torch.inference_mode (no autograd bookkeeping per op: the tiny world's bf16
    generation ~7% faster than under no_grad on this CPU) where nothing it creates can reach a training
    forward: the trainer receives token ids and logprobs as lists, but a tensor a module keeps would
    stay an inference tensor, which autograd refuses to save. So no_grad when sharded (ZeRO-3 and FSDP2
    gather parameters into buffers later training forwards reuse), for quantized models (bitsandbytes
    layers), and for model classes outside transformers (remote code may extend a cos/sin cache while
    generating, as in unsloth issue #2434); transformers' own rotary updates replace their buffers,
    which training only reads."""

    def __init__(self, model, tokenizer, generation_batch_size: int = 256, gather=None, synced: bool = False,
                 autocast: str = "none"):
        self.model = model
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size
        self.gather = gather or nullcontext
        self.synced = synced
        self.sharded = gather is not None or synced
        if autocast not in ("none", "bfloat16"):
            raise ValueError(f"autocast must be 'none' or 'bfloat16', got {autocast!r}")
        self.autocast = autocast

    def _precision(self, device: torch.device):
        """bf16 autocast over a whole generate call, when asked: its weight cache casts each (trainable)
        weight once per call, not once per token."""
        if self.autocast == "none":
            return nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def _grad_mode(self, model):
        """torch.inference_mode where generating cannot leave an inference tensor in the model, else no_grad."""
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        quantized = getattr(inner, "hf_quantizer", None) is not None
        safe = transformers_forward(inner) and not quantized and not self.sharded
        return torch.inference_mode if safe else torch.no_grad

    def _packed(self, model):
        """bf16 CPU linears read weights packed once per call (r1kit.rollout.packed: same outputs; SmolLM2's
        bf16 generation 1.2x faster); not under sharded strategies, whose weights exist only inside `gather`."""
        return nullcontext() if self.sharded else packed_linears(model)

    def update_weights(self, model) -> None:
        self.model = model  # same parameters as the policy: nothing to copy

    def close(self) -> None:
        self.model = None

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams) -> list[Completion]:
        model = getattr(self.model, "module", self.model)  # unwrap DDP / DeepSpeed
        if sampling.seed is None and sampling.temperature > 0:  # unseeded: draw one from torch's generator
            sampling = dataclasses.replace(sampling, seed=int(torch.randint(2**62, ()).item()))
        was_training = model.training
        model.eval()
        try:
            # grouped by prompt; each row carries its own random stream (r1kit.rollout.sampling)
            flat = [(i, p, row_seed(sampling.prompt_seed(i), j) if sampling.temperature > 0 else 0)
                    for i, p in enumerate(prompts) for j in range(n)]
            out: list[Completion] = []
            with self._grad_mode(model)(), self.gather(), self._precision(next(model.parameters()).device), \
                    self._packed(model):
                for start in range(0, len(flat), self.generation_batch_size):
                    out += self._generate_chunk(model, flat[start:start + self.generation_batch_size], sampling)
            return out
        finally:
            model.train(was_training)

    def _generate_chunk(self, model, items: list[tuple[int, list[int], int]], sampling: SamplingParams) -> list[Completion]:
        """Completions of one chunk: r1kit's decode loop, or `generate` when ranks must run in lockstep."""
        stop = eos_ids(model, self.tokenizer)
        if self.synced:
            tokens, logprobs = self._transformers_generate(model, items, sampling, stop)
        else:
            distinct = list(dict.fromkeys(i for i, _, _ in items))  # the chunk's prompts, each prefilled once
            prompts = {i: p for i, p, _ in items}
            out = decode(model, [prompts[i] for i in distinct], [distinct.index(i) for i, _, _ in items],
                         None if sampling.temperature == 0 else [s for _, _, s in items], sampling.max_new_tokens,
                         stop, self.tokenizer.pad_token_id, sampling.temperature, sampling.top_k, sampling.top_p)
            tokens, logprobs = out.tokens, out.logprobs
        return self._completions(items, tokens, logprobs, stop)

    def _transformers_generate(self, model, items: list[tuple[int, list[int], int]], sampling: SamplingParams,
                               stop: set[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, logprobs), both (N, T), from `model.generate` with the SeededSampler as its logits processor.
        Used under sharded strategies (synced_gpus keeps the ranks' forwards in lockstep), and as the
        reference the decode loop is tested against."""
        tok = self.tokenizer
        device = next(model.parameters()).device
        ids, mask = left_pad([p for _, p, _ in items], tok.pad_token_id)
        greedy = sampling.temperature == 0
        # generate itself only ever picks the argmax: of the logits (greedy), or of the SeededSampler's
        # output, which has already sampled. Its own sampling knobs stay off whatever the model's
        # generation_config.json says (top_k=None would mean transformers' default of 50).
        sampler = None if greedy else SeededSampler([s for _, _, s in items], sampling.temperature,
                                                     sampling.top_k, sampling.top_p)
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            repetition_penalty=None, eos_token_id=sorted(stop), pad_token_id=tok.pad_token_id, bos_token_id=None,
            output_scores=greedy, return_dict_in_generate=True)
        with only_recipe_knobs(model):
            result = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                    logits_processor=LogitsProcessorList([sampler] if sampler else []),
                                    synced_gpus=self.synced)
        new_tokens = result.sequences[:, ids.shape[1]:].cpu()  # (N, T)
        if greedy:
            scores = torch.stack(result.scores, dim=1).float()  # (N, T, V) the logits argmax was taken of
            logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.to(scores.device).unsqueeze(-1))
            logprobs = logprobs.squeeze(-1).cpu()  # (N, T)
        else:
            logprobs = torch.stack(sampler.logprobs, dim=1).float().cpu()  # (N, T)
        return new_tokens, logprobs

    def _completions(self, items: list[tuple[int, list[int], int]], new_tokens: torch.Tensor, logprobs: torch.Tensor,
                     stop: set[int]) -> list[Completion]:
        """One Completion per row of (N, T) tokens and logprobs, cut after the first end token."""
        tok = self.tokenizer
        completions = []
        for row, (prompt_index, _, _) in enumerate(items):
            tokens = new_tokens[row].tolist()
            end = next((t + 1 for t, token in enumerate(tokens) if token in stop), None)
            length = end if end is not None else len(tokens)
            tokens = tokens[:length]
            completions.append(Completion(
                prompt_index=prompt_index, token_ids=tokens,
                text=tok.decode(tokens, skip_special_tokens=True),
                finish_reason="stop" if end is not None else "length",
                logprobs=logprobs[row, :length].tolist()))
        return completions
