"""serve-ref under bad and greedy callers: bounded requests, stalled clients, strict JSON in and out (issue 13)."""

import json
import math
import socket
import threading
import time

import pytest
import torch

from r1kit.serve.reference import Limits, ReferenceService, make_server

SMALL = Limits(max_rows=4, max_row_tokens=20, max_padded_tokens=40, read_timeout_s=0.5, max_connections=2,
               header_timeout_s=1.0, max_open_connections=6)


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
        # a tiny positive temperature overflows logits / T (it answered 500); the shared sampling check refuses it
        ({"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": 1e-300}, 400, "temperature must be a finite"),
        ({"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": -1}, 400, "temperature must be a finite"),
        ({"prompt_ids": [[5]], "completion_ids": [[6]], "temperature": "1"}, 400, "temperature must be a finite"),
        # each row fits max_row_tokens (16 <= 20), but a long prompt and a long completion pad every row to 30
        ({"prompt_ids": [[5] * 15, [5]], "completion_ids": [[6], [6] * 15]}, 413, "pad every row to 30 tokens"),
        # many short rows and one long one: the padded total, not the rows' sum, is what the forward costs
        ({"prompt_ids": [[5]] * 3 + [[5] * 12], "completion_ids": [[6]] * 4}, 413, "pads to 52 tokens"),
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


def send_headers(port: int, token: str | None = None, length: int = 100) -> socket.socket:
    """A connection that sent a whole request header and part of its body: its request holds a slot."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    s.sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n{" % (auth, length))
    return s


GOOD = json.dumps({"prompt_ids": [[5]], "completion_ids": [[6]]}).encode()


def test_requests_beyond_the_bound_get_503(server):
    busy = [send_headers(server) for _ in range(2)]  # both slots held by requests whose bodies are on the way
    try:
        time.sleep(0.2)
        code, body = post(server, GOOD)
        assert code == 503 and "too many requests in progress" in body["error"]
    finally:
        for s in busy:
            s.close()
    time.sleep(0.3)  # their slots are freed when their handlers end
    code, body = post(server, GOOD)
    assert code == 200 and len(body["logprobs"][0]) == 1


def test_idle_sockets_take_no_slot(server):
    """Connections that send nothing (or half a header) are not requests yet: callers still get answers."""
    idle = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(3)]  # more than the 2 slots
    idle[0].sendall(b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\n")  # half a header
    try:
        time.sleep(0.2)
        code, body = post(server, GOOD)
        assert code == 200, body
    finally:
        for s in idle:
            s.close()


def test_a_header_sent_a_byte_at_a_time_is_cut_off(server):
    """Every byte comes within read_timeout_s (0.5 s), but the whole header must come within header_timeout_s (1 s)."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        start = time.perf_counter()
        with pytest.raises(OSError):  # the server shuts the connection: a send fails (broken pipe / reset)
            for byte in b"POST /v1/logprobs HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
                s.send(bytes([byte]))
                time.sleep(0.1)
                if time.perf_counter() - start > 4:
                    break
        assert time.perf_counter() - start < 4


def test_open_connections_beyond_the_bound_get_503_until_idle_ones_are_cut(server):
    idle = [socket.create_connection(("127.0.0.1", server), timeout=5) for _ in range(6)]
    try:
        time.sleep(0.2)
        code, body = post(server, GOOD)
        assert code == 503 and "too many open connections" in body["error"]
        time.sleep(1.3)  # header_timeout_s: the idle ones are cut and their threads end
        code, body = post(server, GOOD)
        assert code == 200
    finally:
        for s in idle:
            s.close()


def test_the_token_is_checked_before_a_request_waits_for_a_slot(service):
    srv = make_server(service, "127.0.0.1", 0, token="secret")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    busy = [send_headers(port, "secret") for _ in range(2)]
    try:
        time.sleep(0.2)
        with send_headers(port, "wrong", length=1) as s:  # 401 at once, though no slot is free
            assert b" 401 " in s.recv(4096).split(b"\r\n")[0]
    finally:
        for s in busy:
            s.close()
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 50_000 + b"1" + b"}" * 50_000])
def test_deeply_nested_json_is_a_400(server, raw):
    code, body = post(server, raw)
    assert code == 400 and "nests too deeply" in body["error"]
