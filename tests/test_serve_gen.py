"""serve-gen's security logic without vLLM: the token on every route, the weight route's directory and size
bounds, and one update at a time (issue 13). The same code serves vLLM in tests/test_vllm_server.py."""

import asyncio
import os

import pytest

from r1kit.serve.generation import (BAD_PATH, WEIGHTS_FILE, TokenMiddleware, UpdateError, WeightUpdater, needs_token,
                                    resolve_weights_dir)


@pytest.mark.parametrize("path, expected", [
    ("/health", False),  # the one open route
    ("/v1/completions", True),
    ("/invocations", True),  # SageMaker-style completions: open under vLLM's /v1-only --api-key
    ("/tokenize", True),
    ("/pooling", True),
    ("/metrics", True),
    ("/r1kit/update_weights", True),
    ("/health/", True),  # not the open route: fail closed
    ("/", True),
])
def test_every_route_but_health_needs_the_token(path, expected):
    assert needs_token(path) is expected


def _call(middleware, scope):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}

    asyncio.run(middleware(scope, receive, send))
    return sent


async def _app(scope, receive, send):
    await send({"type": "app", "path": scope["path"]})


@pytest.mark.parametrize("kind, path, header, passed", [
    ("http", "/invocations", None, False),
    ("http", "/invocations", b"Bearer s3cret", True),
    ("http", "/v1/completions", b"Bearer wrong", False),
    ("http", "/health", None, True),
    ("websocket", "/v1/realtime", None, False),
    ("lifespan", "", None, True),  # not a request
])
def test_token_middleware(kind, path, header, passed):
    scope = {"type": kind, "path": path, "headers": [(b"authorization", header)] if header else []}
    sent = _call(TokenMiddleware(_app, "s3cret"), scope)
    if passed:
        assert sent == [{"type": "app", "path": path}]
    elif kind == "http":
        assert sent[0]["status"] == 401 and b"bearer token" in sent[1]["body"]
    else:
        assert sent == [{"type": "websocket.close", "code": 1008}]


def test_weights_dir_must_lie_under_the_root(tmp_path):
    root, outside = tmp_path / "shared", tmp_path / "elsewhere"
    for d in (root / "w", outside):
        d.mkdir(parents=True)
        (d / WEIGHTS_FILE).write_bytes(b"x")
    (root / "link").symlink_to(outside)
    assert resolve_weights_dir(str(root / "w"), str(root)) == (root / "w").resolve()  # absolute, inside
    assert resolve_weights_dir("w", str(root)) == (root / "w").resolve()  # relative to the root
    for bad in (str(outside), "../elsewhere", "link", str(root / "missing"), str(root), "", None, 5, "w\0"):
        assert resolve_weights_dir(bad, str(root)) is None, bad
    assert resolve_weights_dir(str(root / "w"), None) is None  # no root: no paths at all


class FakeEngine:
    """vLLM's engine client as the route uses it; records what each reload saw."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.events, self.reloaded = delay, [], []

    async def pause_generation(self, mode):
        self.events.append("pause")

    async def collective_rpc(self, method, kwargs):
        self.events.append("reload")
        await asyncio.sleep(self.delay)
        self.reloaded.append((kwargs["weights_path"], open(os.path.join(kwargs["weights_path"], WEIGHTS_FILE), "rb").read()))

    async def reset_prefix_cache(self):
        self.events.append("reset")

    async def resume_generation(self):
        self.events.append("resume")


async def _chunks(*parts, pause: float = 0.0):
    for part in parts:
        await asyncio.sleep(pause)
        yield part


def test_uploads_are_bounded_and_leave_nothing_behind(tmp_path):
    engine = FakeEngine()
    updater = WeightUpdater(engine, str(tmp_path), None, max_upload_bytes=10)
    assert asyncio.run(updater.from_upload(_chunks(b"abc", b"def"), 6))["weights_version"] == 1
    assert engine.reloaded == [(str(tmp_path), b"abcdef")]
    for chunks, declared, status in ((_chunks(b"x"), 11, 413),  # declared too big: refused before reading
                                     (_chunks(b"123456", b"789012"), None, 413),  # too big as it arrives
                                     (_chunks(), 0, 400)):  # empty
        with pytest.raises(UpdateError) as err:
            asyncio.run(updater.from_upload(chunks, declared))
        assert err.value.status == status
    assert sorted(os.listdir(tmp_path)) == [WEIGHTS_FILE] and len(engine.reloaded) == 1  # no temp files, no reload


def test_path_updates_reveal_nothing_about_files(tmp_path):
    root = tmp_path / "shared"
    (root / "w").mkdir(parents=True)
    (root / "w" / WEIGHTS_FILE).write_bytes(b"weights")
    updater = WeightUpdater(FakeEngine(), str(tmp_path / "up"), str(root), max_upload_bytes=10)
    assert asyncio.run(updater.from_path(str(root / "w")))["weights_version"] == 1
    messages = set()
    for path in ("/etc", "/etc/passwd", "/no/such/dir", str(root / "missing"), "../..", {"x": 1}):
        with pytest.raises(UpdateError) as err:
            asyncio.run(updater.from_path(path))
        messages.add((err.value.status, str(err.value)))
    assert messages == {(400, BAD_PATH)}  # one answer for existing, missing and outside paths alike
    with pytest.raises(UpdateError, match="--weights-root"):
        asyncio.run(WeightUpdater(FakeEngine(), str(tmp_path), None, 10).from_path(str(root / "w")))


def test_concurrent_pushes_are_serialised(tmp_path):
    """Two uploads at once: each reload sees its own bytes, and reloads never overlap."""
    engine = FakeEngine(delay=0.05)
    updater = WeightUpdater(engine, str(tmp_path), None, max_upload_bytes=100)

    async def both():
        return await asyncio.gather(updater.from_upload(_chunks(b"first", b"-1", pause=0.02), None),
                                    updater.from_upload(_chunks(b"second", b"-2", pause=0.01), None))

    versions = sorted(r["weights_version"] for r in asyncio.run(both()))
    assert versions == [1, 2]
    assert sorted(content for _, content in engine.reloaded) == [b"first-1", b"second-2"]
    assert engine.events == ["pause", "reload", "reset", "resume"] * 2  # one whole update, then the other


def test_an_update_in_parts_reloads_each_and_resets_the_prefix_cache_once(tmp_path):
    engine = FakeEngine()
    updater = WeightUpdater(engine, str(tmp_path), None, max_upload_bytes=100)

    def send(body, update, index, parts):
        return asyncio.run(updater.from_upload(_chunks(body), None, (update, index, parts)))

    assert send(b"one", "u1", 1, 3) == {"part": 1, "parts": 3, "seconds": pytest.approx(0, abs=5)}
    assert updater.pending is not None and updater.version == 0
    assert "part" in send(b"two", "u1", 2, 3) and "part" in send(b"two", "u1", 2, 3)  # a retried part: applied again
    assert send(b"three", "u1", 3, 3)["weights_version"] == 1
    assert send(b"three", "u1", 3, 3)["weights_version"] == 1  # a retried last part: answered, not applied again
    assert [content for _, content in engine.reloaded] == [b"one", b"two", b"two", b"three"]
    assert engine.events == ["pause", "reload", "resume"] * 3 + ["pause", "reload", "reset", "resume"]
    assert updater.pending is None and updater.parts_applied == 4
    for update, index in (("u2", 2), ("u1", 2)):  # no update in progress: only a part 1 may start one
        with pytest.raises(UpdateError, match="resend the update from part 1") as err:
            send(b"x", update, index, 3)
        assert err.value.status == 409
    send(b"a", "u3", 1, 3)
    with pytest.raises(UpdateError, match="does not follow"):
        send(b"c", "u3", 3, 3)  # part 2 skipped
    assert updater.version == 1 and len(engine.reloaded) == 5  # refused parts are never written or reloaded


@pytest.mark.parametrize("query, expected", [({}, None), ({"update": "a", "part": "2", "parts": "3"}, ("a", 2, 3))])
def test_update_parts_are_read_from_the_query(query, expected):
    from r1kit.serve.generation import parse_part

    assert parse_part(query) == expected


@pytest.mark.parametrize("query", [{"update": "a"}, {"update": "a", "part": "0", "parts": "2"},
                                   {"update": "a", "part": "3", "parts": "2"}, {"update": "", "part": "1", "parts": "1"},
                                   {"update": "a", "part": "x", "parts": "2"}])
def test_malformed_parts_are_refused(query):
    from r1kit.serve.generation import parse_part

    with pytest.raises(UpdateError, match=r"\?update=ID&part=I&parts=N") as err:
        parse_part(query)
    assert err.value.status == 400
