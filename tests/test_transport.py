"""The collective weight transport's wire format and group (r1kit.rollout.transport), on loopback over gloo.

The server side (vLLM workers receiving into an in-place reload) is tested in test_vllm_server.py.
"""

import subprocess
import sys
import threading
import time

import pytest
import torch
from test_distributed import free_port

from r1kit.rollout.transport import (ALIGN, TransportGroup, pack_bucket, receive_buckets, send_bucket, send_end,
                                     unpack_bucket)


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(7, 5, generator=g)
    return {"model.embed_tokens.weight": embed,
            "lm_head.weight": embed,  # tied: the same tensor under two names travels twice
            "model.layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g).t(),  # not contiguous
            "model.layers.0.norm.weight": torch.randn(3, generator=g).to(torch.bfloat16),  # 6 bytes: next is unaligned
            "model.layers.0.self_attn.q_proj.weight": torch.randn(2, 3, generator=g).half(),
            "scalar": torch.tensor(2.5, dtype=torch.float64),
            "counts": torch.arange(3, dtype=torch.int64),
            "empty": torch.zeros(0, 4)}


def test_pack_unpack_round_trip_is_exact_for_every_dtype_and_layout():
    state = sample_state()
    meta, payload = pack_bucket(state)
    back = unpack_bucket(len(meta), payload)
    assert [n for n, _ in back] == list(state)
    for (name, got), want in zip(back, state.values()):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
        assert got.data_ptr() % ALIGN == 0 or got.numel() == 0, name  # views, each at an aligned offset


def test_unpack_refuses_an_unknown_dtype_by_name():
    meta, payload = pack_bucket({"w": torch.zeros(2)})
    bad = meta.replace(b'"float32"', b'"float33"')
    patched = torch.cat([torch.frombuffer(bytearray(bad), dtype=torch.uint8), payload[len(meta):]])
    with pytest.raises(ValueError, match=r"tensor 'w' has dtype 'float33'"):
        unpack_bucket(len(bad), patched)


def test_buckets_broadcast_to_a_receiver_arrive_equal_and_in_order():
    port, state = free_port(), sample_state()
    received, errors = [], []

    def receiver():
        try:
            group = TransportGroup("127.0.0.1", port, 1, 2, "g1", timeout_s=30).form()
            received.extend((n, t.clone()) for n, t in receive_buckets(group))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    sender = TransportGroup("127.0.0.1", port, 0, 2, "g1", timeout_s=30)
    thread = threading.Thread(target=receiver)
    thread.start()
    sender.form()
    first, second = dict(list(state.items())[:3]), dict(list(state.items())[3:])
    send_bucket(sender, first)
    send_bucket(sender, second)
    send_end(sender)
    thread.join(30)
    assert not errors and not thread.is_alive()
    assert [n for n, _ in received] == list(state)
    assert all(torch.equal(t, state[n]) for n, t in received)


DIES_AFTER_JOINING = """
import sys
from r1kit.rollout.transport import TransportGroup
TransportGroup("127.0.0.1", int(sys.argv[1]), 1, 2, "g2", timeout_s=60).form()
"""


@pytest.mark.slow  # a subprocess that imports torch: ~10 s on a busy machine
def test_a_peer_that_dies_mid_update_fails_the_broadcast_within_the_timeout():
    port = free_port()
    peer = subprocess.Popen([sys.executable, "-c", DIES_AFTER_JOINING, str(port)])
    try:
        sender = TransportGroup("127.0.0.1", port, 0, 2, "g2", timeout_s=20).form()
        assert peer.wait(timeout=60) == 0
        start = time.time()
        with pytest.raises(RuntimeError):
            for _ in range(20):  # a send may still fit in the socket's buffer; the dead peer shows within a few
                send_bucket(sender, {"w": torch.zeros(1 << 16)})
        assert time.time() - start < 20 + 5
    finally:
        peer.kill()
