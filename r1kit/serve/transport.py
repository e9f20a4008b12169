"""serve-gen's side of the collective weight transport: HTTP for control, a gloo group for the tensors.

Routes (the wire format and the group are r1kit.rollout.transport's):

  POST /r1kit/transport/init   {"host", "port", "world_size", "group", "timeout_s"}: every vLLM worker
                               joins the trainer's group as rank 1 + its worker rank; answers once all
                               have joined -> {"group": ID, "ranks": N}
  POST /r1kit/transport/begin  {"group": ID}: pause generation (in-flight requests finish), start the
                               workers' in-place reload from the broadcasts -> {"receiving": true}
  POST /r1kit/transport/end    {"group": ID}: wait for the reload (the trainer has sent its end marker),
                               reset the prefix cache, resume -> {"weights_version": K+1, "tensors": T}

GET /r1kit/info carries ``workers`` and ``transport_group`` (None until a group is formed, and again
after a failed update or a restart): a trainer that finds another group there forms a new one.

Between begin and end the update holds the weight route's lock, so no file push interleaves. A
receive that fails (the trainer died, a broadcast timed out) resumes generation, releases the lock
and drops the group; its error is the answer to ``end``. Each worker's broadcasts time out after the
``timeout_s`` the trainer sent, so a receive never outlives a dead trainer by more than that.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at run time.
import asyncio
import time

from r1kit.rollout.transport import TransportGroup, first_line, receive_buckets

EXTENSION = "r1kit.serve.transport.CollectiveReceiver"


class CollectiveReceiver:
    """vLLM worker extension (``--worker-extension-cls``): its methods run in each worker via collective_rpc."""

    def r1kit_join_transport(self, host: str, port: int, world_size: int, group: str, timeout_s: float) -> int:
        self.r1kit_transport = None  # a new group replaces a stale one
        self.r1kit_transport = TransportGroup(host, port, 1 + self.rank, world_size, group, timeout_s).form()
        return self.r1kit_transport.rank

    def r1kit_receive_weights(self) -> int:
        """Reload in place from the broadcasts (vLLM's reload lifecycle, as for a file); the tensors received."""
        group = getattr(self, "r1kit_transport", None)
        if group is None:
            raise RuntimeError("this worker is in no weight transport group (POST /r1kit/transport/init first)")
        received = [0]

        def counted():
            for item in receive_buckets(group):
                received[0] += 1
                yield item

        stream = counted()
        try:
            self.model_runner.reload_weights(weights_iterator=stream)
            for name, _ in stream:  # the loader stopped early: drain to the end marker, then refuse
                raise RuntimeError(f"vLLM's loader left tensors unread, first {name!r}")
        except BaseException:
            self.r1kit_transport = None  # the group's state is unknown: the trainer must form a new one
            raise
        return received[0]


class TransportError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class CollectiveUpdates:
    """The control routes' logic without FastAPI. engine: vLLM's engine client; updater: the file route's
    WeightUpdater (its lock and version are shared, so both routes count one version sequence)."""

    def __init__(self, engine, updater):
        self.engine, self.updater = engine, updater
        parallel = engine.vllm_config.parallel_config
        self.workers, self.replicas = parallel.world_size, parallel.data_parallel_size
        self.group: str | None = None
        self.timeout_s = 300.0
        self.receiving: asyncio.Task | None = None

    async def init(self, body: dict) -> dict:
        if self.replicas != 1:
            raise TransportError(400, f"the collective transport drives one engine; this server runs "
                                      f"{self.replicas} data-parallel replicas (use weight_transfer=http)")
        try:
            host, port, world_size = str(body["host"]), int(body["port"]), int(body["world_size"])
            group, timeout_s = str(body["group"]), float(body["timeout_s"])
        except (KeyError, TypeError, ValueError):
            raise TransportError(400, "init needs host, port, world_size, group, timeout_s") from None
        if world_size != self.workers + 1:
            raise TransportError(400, f"world_size {world_size}: this server has {self.workers} workers, so "
                                      f"the group has {self.workers + 1} ranks")
        async with self.updater.lock:
            self.group = None
            await self.engine.collective_rpc("r1kit_join_transport", timeout=timeout_s + 30, kwargs={
                "host": host, "port": port, "world_size": world_size, "group": group, "timeout_s": timeout_s})
            self.group, self.timeout_s = group, timeout_s
        return {"group": group, "ranks": world_size}

    async def begin(self, body: dict) -> dict:
        self._check_group(body)
        if self.receiving is not None and not self.receiving.done():
            raise TransportError(409, "an update is already being received")
        await self.updater.lock.acquire()
        try:
            await self.engine.pause_generation(mode="wait")
        except BaseException:
            self.updater.lock.release()
            raise
        self.receiving = asyncio.create_task(self._receive(time.perf_counter()))
        return {"receiving": True}

    async def _receive(self, start: float) -> dict:
        try:
            tensors = await self.engine.collective_rpc("r1kit_receive_weights")
            await self.engine.reset_prefix_cache()
        except BaseException:
            self.group = None
            raise
        finally:
            await self.engine.resume_generation()
            self.updater.lock.release()
        self.updater.version += 1
        return {"weights_version": self.updater.version, "tensors": tensors[0], "seconds": time.perf_counter() - start}

    async def end(self, body: dict) -> dict:
        if self.receiving is None:
            raise TransportError(409, "no update is being received (POST /r1kit/transport/begin first)")
        task, self.receiving = self.receiving, None
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout_s)
        except asyncio.TimeoutError:
            raise TransportError(504, f"the workers did not finish loading within {self.timeout_s:g} s") from None
        except Exception as e:  # the receive's own failure, reported to the trainer as the update's answer
            raise TransportError(500, f"receiving the broadcast weights failed: {type(e).__name__}: "
                                      f"{first_line(e)}") from None

    def _check_group(self, body: dict) -> None:
        if self.group is None or body.get("group") != self.group:
            raise TransportError(409, f"this server is not in weight transport group {body.get('group')!r} "
                                      f"(it restarted, or an update failed): form a new one (/r1kit/transport/init)")


def add_routes(router, updates_of) -> None:
    """/r1kit/transport/{init,begin,end} on `router`; `updates_of(request)` gives the app's CollectiveUpdates."""
    from fastapi import HTTPException, Request

    def make_route(action: str):
        async def route(request: Request):
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(status_code=400, detail="send a JSON body") from None
            try:
                return await getattr(updates_of(request), action)(body if isinstance(body, dict) else {})
            except TransportError as e:
                raise HTTPException(status_code=e.status, detail=str(e)) from None

        return route

    for action in ("init", "begin", "end"):
        router.add_api_route(f"/r1kit/transport/{action}", make_route(action), methods=["POST"])
