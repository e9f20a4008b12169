"""serve-ref under bad and greedy callers: bounded requests, stalled clients, strict JSON in and out (issue 13)."""

import json
import math
import socket
import threading
import time

import pytest
import torch

from r1kit.serve.reference import Limits, ReferenceService, make_server

SMALL = Limits(max_rows=4, max_row_tokens=20, max_padded_tokens=40, read_timeout_s=0.5, max_connections=2)


@pytest.fixture()
def service(small_model, tiny_tokenizer):
    return ReferenceService(small_model, tiny_tokenizer.pad_token_id, "small", micro_batch_size=2, limits=SMALL)


@pytest.fixture()
def server(service):
    srv = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def post(port: int, body: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.mark.parametrize(
    "request_, status, words",
    [
        ({"prompt_ids": [[5]] * 5, "completion_ids": [[6]] * 5}, 413, "5 rows in one request; this server takes at most 4"),
        ({"prompt_ids": [[5] * 15], "completion_ids": [[6] * 6]}, 413, "row 0 has 21 tokens"),
        ({"prompt_ids": [[5] * 18, [5], [5]], "completion_ids": [[6], [6], [6]]}, 413, "pads to 57 tokens"),
        ({"prompt_ids": [[5, True]], "completion_ids": [[6]]}, 400, "integers, not booleans"),
        ({"prompt_ids": [[5.0]], "completion_ids": [[6]]}, 400, "prompt_ids[0] must be"),
        ({"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": True}, 400, "temperature must be a finite"),
        ({"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": 1e999}, 400, "temperature must be a finite"),
    ],
)
def test_bad_and_oversized_requests_get_a_clear_4xx(service, request_, status, words):
    code, body = service.logprobs(request_)
    assert code == status and words in body["error"]


@pytest.mark.parametrize("raw", [b'{"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": NaN}',
                                 b'{"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": -Infinity}'])
def test_non_finite_json_constants_are_refused(server, raw):
    code, body = post(server, raw)
    assert code == 400 and "is not a JSON number" in body["error"]


def test_bad_content_length_is_a_400(server):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n")
        assert b" 400 " in s.recv(4096).split(b"\r\n")[0]


def test_minus_infinity_is_sent_as_null_and_read_back(service, monkeypatch):
    """A logprob of -inf (probability 0) must not produce the invalid JSON token -Infinity."""
    import r1kit.serve.reference as ref

    monkeypatch.setattr(ref, "completion_logprobs", lambda *a: torch.tensor([[-1.5, -math.inf]]))
    code, body = service.logprobs({"prompt_ids": [[5]], "completion_ids": [[6, 7]]})
    assert code == 200 and body["logprobs"] == [[-1.5, None]]
    json.dumps(body, allow_nan=False)  # strict JSON
    monkeypatch.setattr(ref, "completion_logprobs", lambda *a: torch.tensor([[math.nan, -1.0]]))
    assert service.logprobs({"prompt_ids": [[5]], "completion_ids": [[6, 7]]})[0] == 500

    from r1kit.batch import make_batch
    from r1kit.reference import RemoteReference
    from r1kit.types import Completion

    class FakeClient:
        url = "http://fake"

        def get(self, path):
            return {"model": "small"}

        def post(self, path, body):
            return {"logprobs": [[-1.5, None]]}

    batch = make_batch([Completion(0, [6, 7], "", "stop")], [{"prompt_ids": [5]}], torch.zeros(1), 0)
    remote = RemoteReference.__new__(RemoteReference)
    remote.client, remote.model_name, remote.temperature = FakeClient(), "small", 1.0
    assert remote.logprobs(batch).tolist() == [[-1.5, -math.inf]]


def test_stalled_client_is_dropped(server):
    """A client that sends half a request and goes quiet is cut off after read_timeout_s (0.5 s here)."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt")
        start = time.perf_counter()
        assert s.recv(4096) == b""  # the server closed the connection
        assert time.perf_counter() - start < 3


def test_connections_beyond_the_bound_get_503(server):
    idle = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(2)]  # hold both slots
    try:
        time.sleep(0.1)
        code, body = post(server, b"{}")
        assert code == 503 and "too many connections" in body["error"]
    finally:
        for s in idle:
            s.close()
    time.sleep(0.7)  # the idle ones time out and free their slots
    code, body = post(server, json.dumps({"prompt_ids": [[5]], "completion_ids": [[6]]}).encode())
    assert code == 200 and len(body["logprobs"][0]) == 1
