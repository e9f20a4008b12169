"""Several processes: the accelerator, each rank's share of a step, and the few places that must know about sharding.

Strategies come from Accelerate, configured by the YAML files in recipes/accelerate/ and launched with
``accelerate launch --config_file recipes/accelerate/<name>.yaml -m r1kit train RECIPE``. The loop is
the same for every strategy; what it needs from this module:

- ``make_accelerator``: the Accelerator for the launch. Accelerate 1.15 turns on DeepSpeed and FSDP
  only when it finds a GPU, so on a CPU (CI, laptops) r1kit sets the same strategies up over gloo:
  DeepSpeed through a gloo process group, FSDP2 by switching the state Accelerate built to FSDP.
  The code paths after that are Accelerate's and DeepSpeed's own, which is what makes them testable here.
- ``local_share``: whole groups stay on one rank: rank r samples and scores prompts
  [r*B/W, (r+1)*B/W) of the step, so advantages need no communication.
- ``synced_chunks``: under DDP, ZeRO and FSDP every forward of the prepared model is a collective
  operation (buffer broadcast, parameter gathers), so every rank runs the same number of them;
  ranks with fewer rows run empty micro-batches (a dummy row with weight 0).
- ``backward``: one optimizer step per batch; DeepSpeed is told where the accumulation boundary is.
- ``gather_for_generation`` / ``full_state_dict``: sharded weights made whole, for ``generate`` and saving.
- ``weights_gatherer``: sharded weights made whole a few tensors at a time, for the push to a vLLM server.
- ``reduce_metrics``: the step's metrics as global means (maxima for ``*max*`` keys).
- ``leave_process_group``: after a command every rank finished, the process group torn down before exit.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from r1kit.config import ConfigError

STRATEGY_HINT = ("launch several processes with `accelerate launch --config_file recipes/accelerate/<ddp|zero2|"
                 "zero2-offload|zero3|fsdp2>.yaml --num_processes N -m r1kit train RECIPE`")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def make_accelerator(device: str = "auto", max_grad_norm: float = 1.0, dtype: str = "float32") -> Accelerator:
    """The Accelerator for this launch (single process, DDP, DeepSpeed ZeRO-2/3 or FSDP2), on GPU or CPU.
    ``dtype`` is the recipe's model.dtype: where the launch config leaves precision to the recipe
    (mixed_precision 'no'), ZeRO-3 holds the weights in it rather than in DeepSpeed's float32."""
    from accelerate.utils import InitProcessGroupKwargs

    deepspeed, fsdp = _env_flag("ACCELERATE_USE_DEEPSPEED"), _env_flag("ACCELERATE_USE_FSDP")
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    on_cpu = device == "cpu" or not torch.cuda.is_available()
    if (deepspeed or fsdp) and not launched:
        raise ConfigError(f"{'DeepSpeed' if deepspeed else 'FSDP'} needs a process group, and this process was not "
                          f"started by a launcher: {STRATEGY_HINT}")
    if deepspeed:
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if on_cpu else "cuda")
        try:
            import deepspeed as _  # noqa: F401
        except ImportError as e:
            raise ImportError(f"the DeepSpeed strategy needs deepspeed: pip install deepspeed ({e})") from e
    if on_cpu and (deepspeed or fsdp):
        acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
        if fsdp:
            _switch_to_fsdp(acc)
    else:
        acc = Accelerator(cpu=on_cpu)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        ds = acc.state.deepspeed_plugin.deepspeed_config
        # r1kit accumulates micro-batches itself (backward() below marks the boundary) and clips in
        # DeepSpeed's step, so these are the trainer's numbers, not the YAML's "auto".
        ds["train_micro_batch_size_per_gpu"] = 1
        ds["gradient_accumulation_steps"] = 1
        ds["gradient_clipping"] = max_grad_norm
        if ds.get("zero_optimization", {}).get("stage") == 3:
            ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True  # final/ is whole
            if acc.mixed_precision == "no" and dtype in ("bfloat16", "float16"):
                # ZeRO-3 partitions in float32 unless its bf16/fp16 section is on: a bf16 recipe under the
                # shipped zero3.yaml then trains and saves bf16 (DeepSpeed keeps float32 master weights in its
                # optimizer, as open-r1's bf16 ZeRO-3 runs do)
                ds["bf16" if dtype == "bfloat16" else "fp16"] = {"enabled": True}
                # transformers' from_pretrained partitions through the config Accelerate registered (a copy made
                # before this change): register it again, or the model would load in float32
                acc.state.deepspeed_plugin.set_deepspeed_weakref()
    return acc


def _switch_to_fsdp(acc: Accelerator) -> None:
    """Accelerate 1.15 builds a DistributedType.NO state on a CPU even when its launcher asked for FSDP
    (it enables FSDP only for GPU-like devices); FSDP2 itself runs on CPU over gloo, so switch it on."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables the launcher set
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def strategy_name(acc: Accelerator) -> str:
    t = acc.distributed_type
    if t == DistributedType.DEEPSPEED:
        return f"zero{acc.state.deepspeed_plugin.zero_stage}"
    if t == DistributedType.FSDP:
        return f"fsdp{acc.state.fsdp_plugin.fsdp_version}"
    return "ddp" if acc.num_processes > 1 else "single"


def whole_weights_init(acc: Accelerator):
    """A context in which from_pretrained loads whole weights even under ZeRO-3: for a frozen model that
    DeepSpeed never wraps (the replicated KL reference). Under ZeRO-3, Accelerate registers its DeepSpeed
    config with transformers, which then loads every model partitioned (zero.Init); a partitioned model
    outside DeepSpeed's engine has empty weights. (Accelerate's zero3_init_context_manager(enable=False)
    registers the same stage-3 config again, so transformers would still partition.)"""
    if strategy_name(acc) != "zero3":
        return nullcontext()

    @contextmanager
    def unregistered():
        from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

        registered = acc.state.deepspeed_plugin.dschf  # the object transformers holds a weak reference to
        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            set_hf_deepspeed_config(registered)

    return unregistered()


def is_sharded(acc: Accelerator) -> bool:
    """Weights split across ranks (ZeRO-3, FSDP): a forward needs every rank."""
    return strategy_name(acc) in ("zero3", "fsdp1", "fsdp2")


# ---------------------------------------------------------------- each rank's share


def local_share(count: int, acc: Accelerator, what: str = "prompts per step") -> range:
    """The contiguous block of `count` items this rank handles; count must divide evenly."""
    world = acc.num_processes
    if count % world:
        raise ConfigError(f"{what} ({count}) must be divisible by the number of processes ({world}): "
                          "change train.batch_size or --num_processes")
    size = count // world
    return range(acc.process_index * size, (acc.process_index + 1) * size)


def padded_share(count: int, acc: Accelerator) -> tuple[range, int]:
    """A share of `count` items that need not divide evenly (evaluation): this rank's range and the
    number of items every rank processes (the last ranks pad with repeats, dropped after gathering)."""
    per_rank = -(-count // acc.num_processes)
    start = min(acc.process_index * per_rank, count)
    return range(start, min(start + per_rank, count)), per_rank


def gather_lists(acc: Accelerator, items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    if acc.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def gather_values(acc: Accelerator, values: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D tensor (lengths may differ), concatenated in rank order, on every rank, on the CPU."""
    if acc.num_processes == 1:
        return values
    sizes = acc.gather(torch.tensor([values.numel()], device=acc.device)).cpu().tolist()
    padded = acc.pad_across_processes(values.to(acc.device), dim=0)
    rows = acc.gather(padded).cpu().view(acc.num_processes, -1)
    return torch.cat([rows[r, :n] for r, n in enumerate(sizes)])


def all_max(acc: Accelerator, value: int) -> int:
    if acc.num_processes == 1:
        return value
    return int(_all_reduce(acc, torch.tensor([value], dtype=torch.long), "max").item())


def all_sum(acc: Accelerator, values: list[float]) -> list[float]:
    if acc.num_processes == 1:
        return list(values)
    return _all_reduce(acc, torch.tensor(values, dtype=torch.float64), "sum").tolist()


def _all_reduce(acc: Accelerator, t: torch.Tensor, op: str) -> torch.Tensor:
    """In-place all-reduce on the accelerator's device (NCCL needs GPU tensors); the result on the CPU."""
    import torch.distributed as dist

    t = t.to(acc.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu()


def reduce_metrics(acc: Accelerator, metrics: dict) -> dict:
    """Global metrics: the mean over ranks that have a value (NaN = none), the max for `*max*` keys, the min
    for keys ending in `_min`.

    Ranks hold equal shares of the step (local_share), so the mean of rank means is the global mean.
    """
    if acc.num_processes == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    present = ~torch.isnan(values)
    is_min = torch.tensor([k.endswith("_min") for k in keys])
    is_max = torch.tensor(["max" in k for k in keys]) | is_min  # a minimum is minus the maximum of minus values
    signed = torch.where(is_min, -values, values)
    sums = _all_reduce(acc, torch.cat([torch.where(present & ~is_max, values, 0.0), present.double()]), "sum")
    maxima = _all_reduce(acc, torch.where(present & is_max, signed, float("-inf")), "max")
    maxima = torch.where(is_min, -maxima, maxima)
    total, count = sums[:len(keys)], sums[len(keys):]
    out = dict(metrics)
    for i, k in enumerate(keys):
        if count[i] == 0:
            out[k] = float("nan")
        else:
            out[k] = maxima[i].item() if is_max[i] else (total[i] / count[i]).item()
    return out


def weights_finite(acc: Accelerator, model) -> bool:
    """True when every process's weights (its shards, under ZeRO-3/FSDP) are free of NaN and inf."""
    bad = any(not torch.isfinite(p.detach()).all() for p in model.parameters() if p.numel())
    return all_max(acc, int(bad)) == 0


def peak_memory_gb(acc: Accelerator) -> float:
    """This process's peak memory so far, in GiB: CUDA allocations on a GPU, the resident set on a CPU."""
    if acc.device.type == "cuda":
        return torch.cuda.max_memory_allocated(acc.device) / 2**30
    return peak_resident_gb()


def peak_resident_gb() -> float:
    """This process's resident-set high-water mark, in GiB.

    On Linux: VmHWM of /proc/self/status, the mark of this program's own memory. getrusage's ru_maxrss is
    not: it keeps the mark of the process this one was started from (fork, then exec), so every worker
    of a launcher holding 2 GiB would report at least 2 GiB. Elsewhere ru_maxrss, in bytes on macOS and
    KiB on the BSDs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except FileNotFoundError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


# ---------------------------------------------------------------- forward / backward in lockstep


def synced_chunks(rows: torch.Tensor, micro_batch_size: int, acc: Accelerator) -> list[torch.Tensor]:
    """`rows` split into micro-batches, padded with empty ones to the largest count on any rank."""
    chunks = list(rows.split(micro_batch_size)) if len(rows) else []
    target = all_max(acc, len(chunks))
    return chunks + [rows[:0]] * (target - len(chunks))


def backward(acc: Accelerator, model, loss: torch.Tensor, last: bool) -> None:
    """Accumulate one micro-batch's gradient; `last` ends the batch (gradients are reduced across ranks,
    and DeepSpeed takes its optimizer step, clipping included)."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        acc.deepspeed_engine_wrapped.backward(loss, sync_gradients=last)
        return
    with nullcontext() if last else acc.no_sync(model):  # DDP reduces once, at the last micro-batch
        acc.backward(loss)


# ---------------------------------------------------------------- whole weights from sharded ones


def gather_for_generation(acc: Accelerator, model):
    """A context-manager factory for the HF engine: under ZeRO-3 the full weights are gathered for the
    whole generate call (TRL's ds3_gather_for_generation: no all-gather per token); elsewhere None.
    FSDP2 generates from its sharded layers, gathering per layer, in lockstep (HFEngine synced=True)."""
    if strategy_name(acc) != "zero3":
        return None

    @contextmanager
    def gathered():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield

    return gathered


def weights_gatherer(acc: Accelerator):
    """How the server weight push sees whole tensors (r1kit.rollout.weights.Gatherer): under ZeRO-3 a
    GatheredParameters per load unit, under FSDP2 each DTensor's full_tensor(); both are collective, so
    every rank runs the export and only the main process keeps and posts. Elsewhere weights are whole."""
    from r1kit.rollout.weights import LOCAL, Gatherer

    strategy = strategy_name(acc)
    if strategy == "zero3":
        @contextmanager
        def whole(tensors):
            import deepspeed

            with deepspeed.zero.GatheredParameters(tensors, modifier_rank=None):
                yield [t.data for t in tensors]

        return Gatherer(numel=lambda t: getattr(t, "ds_numel", t.numel()), whole=whole, collective=True)
    if strategy == "fsdp2":
        @contextmanager
        def whole(tensors):
            from torch.distributed.tensor import DTensor

            yield [t.full_tensor() if isinstance(t, DTensor) else t for t in tensors]

        return Gatherer(whole=whole, collective=True)  # a DTensor's numel() is its full size
    if is_sharded(acc):  # refused at set-up (run.py _check_strategy); kept so no caller pushes half a model
        raise ConfigError(f"the weight push cannot gather {strategy} shards; use zero3 or fsdp2")
    return LOCAL


def replicas_identical(acc: Accelerator, model) -> bool | None:
    """Under replicated strategies (DDP, ZeRO-2) every process must hold the same weights: compare a
    fingerprint (per-tensor float64 sums, exact for identical tensors) across processes. None where the
    weights are sharded or there is one process."""
    if acc.num_processes == 1 or is_sharded(acc):
        return None
    fingerprint = [p.detach().double().sum().item() for p in acc.unwrap_model(model).parameters()]
    fingerprints = gather_lists(acc, [fingerprint])
    return all(f == fingerprints[0] for f in fingerprints)


def full_state_dict(acc: Accelerator, model) -> dict[str, torch.Tensor] | None:
    """The whole model's state dict on the main process (None elsewhere); every rank must call it."""
    if acc.num_processes == 1 or strategy_name(acc) in ("ddp", "zero2"):
        return acc.unwrap_model(model).state_dict() if acc.is_main_process else None
    state = acc.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards
    return state if acc.is_main_process else None


def leave_process_group() -> None:
    """After a command that every rank finished: wait for the others, then destroy the process group, as
    Accelerate's `end_training` does; nothing where no group was made (one process, no launcher).

    torch asks for this before a process exits (with NCCL it warns at every exit otherwise); left to the
    interpreter's shutdown, the group's threads are torn down in no set order, and a finished ZeRO-3 rank on
    gloo was seen in CI to abort at exit ("terminate called without an active exception"; whether this
    teardown prevents that is not proven: it was rare and did not recur in 15 runs before the change)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank leaves while another may still be in the last collective
        torch.distributed.destroy_process_group()
