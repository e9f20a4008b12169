"""The collective weight transport (``services.weight_transfer: collective``): weights as packed broadcasts.

The trainer's main process (rank 0) and the generation server's vLLM workers (ranks 1..W) form a
process group of their own: a torch ``TCPStore`` that the trainer hosts, and a gloo group built on it
directly (``ProcessGroupGloo``, not ``init_process_group``), so it lives beside Accelerate's default
group in the trainer and vLLM's own group in the workers. Both sides run this module (the server
through r1kit.serve.transport), so the wire format has one definition.

One update is a series of buckets (export_buckets' parts), each two broadcasts from rank 0:

    header  int64[2] = [meta_bytes, data_bytes]      [0, 0] ends the update
    payload uint8[meta_bytes + pad + data_bytes]     JSON [[name, dtype, shape, offset], ...], then the
                                                     tensors' bytes, each at a 16-byte-aligned offset

A receiver turns the payload back into views of one buffer (no copy) and hands them to vLLM's
in-place reload as a lazy iterator, so the worker holds one bucket beyond its own weights.

Every step has a timeout (``timeout_s``): the store's connect, the group's formation and each
broadcast's wait. A peer that dies mid-broadcast raises at once (connection reset) or at the timeout.
NCCL is not offered: gloo moves CPU tensors, which is what the export produces; with GPUs on both
sides NCCL would skip two copies, but it is untested here (no GPU vLLM in CI).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from r1kit.rollout.http import ServiceError

ALIGN = 16  # every tensor's bytes start at a multiple of this in the payload (views of any dtype stay aligned)
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool)}


class TransportGroup:
    """One member of a weight-transport group: rank 0 (the trainer, hosting the store) or a receiver.

    host, port: the store's address (port 0 on rank 0: a free port, then ``self.port``); group_id: names
    the group in the store, so a re-formed group never meets a stale key.
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, group_id: str, timeout_s: float):
        self.host, self.rank, self.world_size, self.group_id = host, rank, world_size, group_id
        self.timeout_s = timeout_s
        self.timeout = timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=self.timeout,
                                   wait_for_workers=False)
        self.port = self.store.port
        self.pg = None

    def form(self) -> "TransportGroup":
        """Block until every rank has joined (at most timeout_s). Gloo listens on this machine's address
        towards the store's host (GLOO_SOCKET_IFNAME, when set, picks the interface instead)."""
        prefixed = dist.PrefixStore(f"r1kit-weights/{self.group_id}", self.store)
        options = dist.ProcessGroupGloo._Options()  # what torch's own new_group builds, with our device
        options._timeout = self.timeout
        options._devices = [dist.ProcessGroupGloo.create_default_device() if os.environ.get("GLOO_SOCKET_IFNAME")
                            else dist.ProcessGroupGloo.create_device(hostname=local_address_towards(self.host))]
        self.pg = dist.ProcessGroupGloo(prefixed, self.rank, self.world_size, options)
        return self

    def broadcast(self, tensor: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank, options.rootTensor = 0, 0
        self.pg.broadcast([tensor], options).wait(self.timeout)

    def close(self) -> None:
        self.pg = self.store = None  # gloo's pairs and the store's socket close with their last reference


def pack_bucket(state: dict[str, torch.Tensor]) -> tuple[bytes, torch.Tensor]:
    """(JSON meta, uint8 payload of meta then each tensor's bytes at an ALIGN-ed offset) for `state`'s CPU tensors."""
    entries, offset = [], 0
    for name, t in state.items():
        offset = _aligned(offset)
        entries.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset])
        offset += t.numel() * t.element_size()
    meta = json.dumps(entries).encode()
    start = _aligned(len(meta))
    payload = torch.empty(start + offset, dtype=torch.uint8)
    payload[:len(meta)] = torch.frombuffer(bytearray(meta), dtype=torch.uint8)
    for (name, _, _, at), t in zip(entries, state.values()):
        flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        payload[start + at:start + at + flat.numel()] = flat
    return meta, payload


def unpack_bucket(meta_bytes: int, payload: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """pack_bucket's inverse: [(name, tensor view of `payload`)], in the sender's order."""
    entries = json.loads(bytes(payload[:meta_bytes].numpy()))
    start = _aligned(meta_bytes)
    out = []
    for name, dtype_name, shape, at in entries:
        if dtype_name not in _DTYPES:
            raise ValueError(f"weight transport: tensor {name!r} has dtype {dtype_name!r}; known: {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype_name]
        size = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        out.append((name, payload[start + at:start + at + size].view(dtype).view(shape)))
    return out


def send_bucket(group: TransportGroup, state: dict[str, torch.Tensor]) -> None:
    meta, payload = pack_bucket(state)
    group.broadcast(torch.tensor([len(meta), payload.numel() - len(meta)], dtype=torch.int64))
    group.broadcast(payload)


def send_end(group: TransportGroup) -> None:
    group.broadcast(torch.zeros(2, dtype=torch.int64))


def receive_buckets(group: TransportGroup) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every bucket rank 0 sends, until its end marker; each bucket's tensors share one buffer."""
    while True:
        header = torch.zeros(2, dtype=torch.int64)
        group.broadcast(header)
        meta_bytes, data_bytes = (int(x) for x in header)
        if meta_bytes == 0:
            return
        payload = torch.empty(_aligned(meta_bytes) + data_bytes, dtype=torch.uint8)
        group.broadcast(payload)
        yield from unpack_bucket(meta_bytes, payload)


class CollectiveSender:
    """The trainer's side of the transport: forms the group with the server's workers (again after the
    server restarted or an update failed), then sends each update as buckets between /begin and /end.

    client: the generation server's ServiceClient; address: "host" or "host:port" the workers reach this
    process at (None: this machine's address towards the server, a free port); timeout_s: every wait.
    """

    def __init__(self, client, address: str | None, timeout_s: float):
        self.client, self.timeout_s = client, timeout_s
        host, _, port = (address or "").partition(":")
        self.host, self.port = host or local_address_towards(client.url), int(port or 0)
        self.group: TransportGroup | None = None

    def begin(self) -> None:
        info = self.client.get("/r1kit/info")
        if "transport_group" not in info:
            raise ServiceError(f"generation server at {self.client.url} offers no collective weight transport "
                               "(start it with this r1kit's `r1kit serve-gen`)")
        if self.group is None or info["transport_group"] != self.group.group_id:
            self._form(int(info["workers"]))
        self._control("begin")

    def send(self, bucket: dict[str, torch.Tensor], part: int, parts: int) -> None:
        self._guarded(lambda: send_bucket(self.group, bucket), f"part {part} of {parts}")

    def end(self) -> dict:
        self._guarded(lambda: send_end(self.group), "the end marker")
        return self._control("end")

    def _form(self, workers: int) -> None:
        self.group = None
        group = TransportGroup(self.host, self.port, 0, workers + 1, uuid.uuid4().hex, self.timeout_s)
        formed: list[BaseException | None] = []

        def form():
            try:
                group.form()
                formed.append(None)
            except BaseException as e:  # reported by the main thread below
                formed.append(e)

        thread = threading.Thread(target=form, name="r1kit-transport-form", daemon=True)
        thread.start()  # rank 0 waits for the workers, who join when the server gets the init request
        self._control("init", host=self.host, port=group.port, world_size=workers + 1, timeout_s=self.timeout_s,
                      group=group.group_id)
        thread.join(self.timeout_s)
        if not formed or formed[0] is not None:
            cause = f": {first_line(formed[0])}" if formed else ""
            raise ServiceError(f"generation server at {self.client.url} did not form the weight transport group "
                               f"at {self.host}:{group.port} within {self.timeout_s:g} s{cause}")
        self.group = group

    def _control(self, action: str, **body) -> dict:
        payload = {"group": self.group.group_id if self.group else body.get("group"), **body}
        return self.client.post(f"/r1kit/transport/{action}", payload, timeout_s=self.timeout_s + 30, retries=0)

    def _guarded(self, send, what: str) -> None:
        try:
            send()
        except RuntimeError as e:  # gloo: a dead peer (connection reset) or the timeout
            self.group = None
            raise ServiceError(f"generation server at {self.client.url} failed the weight broadcast ({what}, "
                               f"timeout {self.timeout_s:g} s): {first_line(e)}") from None


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def local_address_towards(host_or_url: str) -> str:
    """This machine's address on the route to a host (or a URL's host); no packet is sent: a UDP socket only
    picks a route."""
    host = urlsplit(host_or_url).hostname if "://" in host_or_url else host_or_url
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host or "127.0.0.1", 9))
        return probe.getsockname()[0]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
