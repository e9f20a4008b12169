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
