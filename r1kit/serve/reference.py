"""`r1kit serve-ref MODEL`: a reference-model server that returns per-token logprobs (Minimal-R1 / xDAN layout).

The KL term needs log p_ref(completion token | prefix) for every sampled token. On a big model the
frozen reference copy costs as much memory as the policy, so those systems put it on its own GPU or
node. This server runs exactly the code the in-process reference runs (``r1kit.batch.completion_logprobs``
on a frozen model), so its answers equal ``LocalReference``'s for the same weights and inputs
(tests/test_services.py).

Routes (JSON):
  GET  /health          {"status": "ok", "model": NAME}            (never needs the token)
  POST /v1/logprobs     {"model": NAME, "prompt_ids": [[int]], "completion_ids": [[int]], "temperature": 1.0}
                     -> {"model": NAME, "logprobs": [[float]]}      one list per completion, its length

Security: it binds 127.0.0.1 unless --host says otherwise. Anyone who can reach the port can use
it; with a token (the variable --token-env names, R1KIT_SERVICE_TOKEN by default) every route but
/health needs ``Authorization: Bearer TOKEN``. Put it behind a firewall or an SSH tunnel between nodes.

Bounds (``Limits``; ``r1kit serve-ref --help``), so that one caller cannot tie up the memory and the
model for everyone: rows per request, tokens per row (prompt + completion) and padded tokens per
request (rows x (longest prompt + longest completion)) are capped, and so is the padded row itself
(413, naming the bound); a client that stalls while sending gets ``read_timeout_s`` and is dropped, and
one that has not sent a whole request header within ``header_timeout_s`` is cut off. At most
``max_connections`` requests are served at once (503 beyond), each taking its slot only once its
headers and token are in, so idle or unauthorised sockets cannot take the slots; at most
``max_open_connections`` connections are open at all. Token ids must be ints (not booleans) in the
vocabulary; the temperature a finite number >= 1e-2 (r1kit.types.MIN_TEMPERATURE); bodies with
NaN/Infinity or nested too deeply for the parser are refused (400). Answers are always strict JSON: a logprob of
-infinity (a token the model gives probability 0) is sent as null, and RemoteReference reads it back.
Standard library HTTP server (one forward pass at a time: the model is the bottleneck anyway).
"""

from __future__ import annotations

import hmac
import json
import math
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from r1kit.batch import completion_logprobs, make_batch
from r1kit.types import Completion, sampling_problems

MAX_BODY = 256 * 1024 * 1024  # a request larger than this is refused (413)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (defaults fit a GRPO batch of 256 rows x 4k tokens)."""

    max_rows: int = 1024  # completions per request
    max_row_tokens: int = 16384  # prompt + completion tokens of one row
    max_padded_tokens: int = 1 << 20  # rows x (longest prompt + longest completion): the padded batch
    read_timeout_s: float = 30.0  # a client silent this long while sending is dropped
    max_connections: int = 32  # requests served at once (after their headers and token check); more get 503
    header_timeout_s: float = 10.0  # a connection must send a request's whole header within this; else dropped
    max_open_connections: int = 256  # connections open at once, idle or not (each a thread); more get 503 at once


class ReferenceService:
    """The model behind the routes: validates a request and scores it."""

    def __init__(self, model, pad_id: int, name: str, micro_batch_size: int = 64, limits: Limits = Limits()):
        self.model = model.requires_grad_(False).eval()
        self.pad_id = pad_id
        self.name = name
        self.micro_batch_size = micro_batch_size
        self.limits = limits
        self.vocab = model.get_input_embeddings().weight.shape[0]
        self.lock = threading.Lock()

    def logprobs(self, request: dict) -> tuple[int, dict]:
        """(HTTP status, JSON body) for a /v1/logprobs request."""
        model = request.get("model")
        if model is not None and model != self.name:
            return 404, {"error": f"this reference server serves model {self.name!r}, not {model!r}"}
        prompts, completions = request.get("prompt_ids"), request.get("completion_ids")
        temperature = request.get("temperature", 1.0)
        problem = _check_ids(prompts, completions, self.vocab)
        if problem is None and (bad := sampling_problems({"temperature": "temperature", "top_p": "top_p"},
                                                         temperature, 1.0, 0, None)):
            problem = bad[0]
        if problem:
            return 400, {"error": problem}
        if (too_big := _over_limits(prompts, completions, self.limits)) is not None:
            return 413, {"error": too_big}
        if not prompts:
            return 200, {"model": self.name, "logprobs": []}
        rows = [{"prompt_ids": p} for p in prompts]
        items = [Completion(i, c, "", "stop") for i, c in enumerate(completions)]
        batch = make_batch(items, rows, torch.zeros(len(items)), self.pad_id)
        with self.lock, torch.no_grad():
            out = completion_logprobs(self.model, batch, float(temperature), self.micro_batch_size).float().cpu()
        if out.isnan().any() or out.isposinf().any():
            return 500, {"error": "the model produced NaN or +inf logprobs for this request"}
        return 200, {"model": self.name, "logprobs": [[None if math.isinf(v) else v for v in out[i, :len(c)].tolist()]
                                                      for i, c in enumerate(completions)]}


def _check_ids(prompts, completions, vocab: int) -> str | None:
    if not isinstance(prompts, list) or not isinstance(completions, list) or len(prompts) != len(completions):
        return "prompt_ids and completion_ids must be lists of token-id lists of the same length"
    for name, lists in (("prompt_ids", prompts), ("completion_ids", completions)):
        for i, ids in enumerate(lists):  # type() is int: a JSON true/false is a bool, not a token id
            if not isinstance(ids, list) or not ids or not all(type(t) is int and 0 <= t < vocab for t in ids):
                return f"{name}[{i}] must be a non-empty list of token ids (integers, not booleans) in [0, {vocab})"
    return None


def _over_limits(prompts: list, completions: list, limits: Limits) -> str | None:
    """Which bound of `limits` the request exceeds, as an error line; None when it fits."""
    if len(prompts) > limits.max_rows:
        return f"{len(prompts)} rows in one request; this server takes at most {limits.max_rows} (split the batch)"
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if len(p) + len(c) > limits.max_row_tokens:
            return (f"row {i} has {len(p) + len(c)} tokens (prompt + completion); this server takes at most "
                    f"{limits.max_row_tokens} per row")
    width = max(map(len, prompts), default=0) + max(map(len, completions), default=0)
    if width > limits.max_row_tokens:  # prompts pad (left) to the longest, completions (right) to the longest
        return (f"the longest prompt plus the longest completion pad every row to {width} tokens; this server takes "
                f"at most {limits.max_row_tokens} per padded row (send rows of very different lengths apart)")
    padded = len(prompts) * width
    if padded > limits.max_padded_tokens:
        return (f"the request pads to {padded} tokens ({len(prompts)} rows x the longest prompt + completion); this "
                f"server takes at most {limits.max_padded_tokens} (send long rows in their own request)")
    return None


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def make_handler(service: ReferenceService, token: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = service.limits.read_timeout_s  # socket timeout: a stalled client frees its thread

        def log_message(self, fmt, *args):  # one quiet line per request on stderr
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not token:
                return True
            given = self.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

        def handle_one_request(self):
            # the request line and headers must all arrive within header_timeout_s (a per-read timeout alone
            # lets a client send one byte at a time forever); only then does the request compete for a slot
            self._header_deadline = threading.Timer(service.limits.header_timeout_s, self._drop)
            self._header_deadline.daemon = True
            self._header_deadline.start()
            try:
                super().handle_one_request()
            finally:
                self._header_deadline.cancel()

        def parse_request(self) -> bool:
            self._header_deadline.cancel()  # the headers are in
            return super().parse_request()

        def _drop(self) -> None:
            try:
                self.connection.shutdown(socket.SHUT_RDWR)  # the blocked header read returns: the handler ends
            except OSError:
                pass  # already closed

        def do_GET(self):
            if self.path == "/health":
                return self._send(200, {"status": "ok", "model": service.name})
            return self._send(404, {"error": f"no route GET {self.path}"})

        def do_POST(self):
            if self.path != "/v1/logprobs":
                return self._send(404, {"error": f"no route POST {self.path}"})
            if not self._authorized():
                return self._send(401, {"error": "missing or wrong bearer token"})
            if not self.server.slots.acquire(blocking=False):  # checked token, whole headers: now it may wait
                self.close_connection = True
                return self._send(503, {"error": "too many requests in progress; retry later"})
            try:
                return self._logprobs()
            finally:
                self.server.slots.release()

        def _logprobs(self) -> None:
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit():
                return self._send(400, {"error": f"Content-Length must be a number of bytes, got {length!r}"})
            if int(length) > MAX_BODY:
                return self._send(413, {"error": f"request body over {MAX_BODY} bytes"})
            try:
                request = json.loads(self.rfile.read(int(length)) or b"{}", parse_constant=_no_constants)
            except ValueError as e:
                return self._send(400, {"error": f"body is not JSON: {e}"})
            except RecursionError:  # json's parser recurses once per nesting level
                return self._send(400, {"error": "body nests too deeply to be a logprobs request"})
            if not isinstance(request, dict):
                return self._send(400, {"error": "body must be a JSON object"})
            try:
                status, body = service.logprobs(request)
            except Exception as e:  # a server error is reported, never a dropped connection
                status, body = 500, {"error": f"{type(e).__name__}: {e}"}
            return self._send(status, body)

    return Handler


class BoundedServer(ThreadingHTTPServer):
    """A threading server with two bounds: `max_open` connections at all (each a thread; closed at once beyond it,
    and a connection that does not send a whole request header in time is cut), and `slots` requests served at
    once, taken only after a request's headers and token are in (503 beyond): idle sockets cannot take the slots."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int, max_open: int):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.open = threading.BoundedSemaphore(max_open)

    def process_request(self, request, client_address):
        if not self.open.acquire(blocking=False):  # nothing is read from this connection
            body = b'{"error": "too many open connections; retry later"}'
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass  # the client is gone already: nothing to tell it
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.open.release()


def make_server(service: ReferenceService, host: str = "127.0.0.1", port: int = 8001,
                token: str | None = None) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free port: server.server_address[1]); call serve_forever()."""
    limits = service.limits
    return BoundedServer((host, port), make_handler(service, token), limits.max_connections, limits.max_open_connections)


def load_service(model_name: str, dtype: str = "float32", device: str = "auto", micro_batch_size: int = 64,
                 served_name: str | None = None, trust_remote_code: bool = False,
                 limits: Limits = Limits()) -> ReferenceService:
    """Load MODEL the way the trainer loads its reference (r1kit.models), frozen, on `device`."""
    from r1kit.config import ModelCfg
    from r1kit.models import load_model, load_tokenizer, pick_device

    tokenizer = load_tokenizer(model_name, trust_remote_code)
    cfg = ModelCfg(name_or_path=model_name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model = load_model(cfg, tokenizer).to(pick_device(device))
    return ReferenceService(model, tokenizer.pad_token_id, served_name or model_name, micro_batch_size, limits)
