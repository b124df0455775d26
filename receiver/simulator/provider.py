"""The simulated provider: the video API of the contract, signed deliveries, and faults on demand."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import math
import random
import secrets
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from receiver.rules import jsonpolicy
from receiver.rules.signatures import parse_key, sign_v1

__all__ = ["SimConfig", "SimTask", "Simulator", "result_file"]

log = logging.getLogger("receiver.simulator.provider")


@dataclass(frozen=True)
class SimConfig:
    """How the simulated provider behaves. Durations are in provider seconds; `time_scale`
    runs that many provider seconds per real second (60: an hour of provider time in a minute)."""

    secret: str = field(default="", repr=False)  # whsec_... that signs deliveries; "" = unsigned
    api_key: str | None = field(default=None, repr=False)  # required bearer key, if any
    # More bearer keys accepted besides api_key (serve: the receiver's RECEIVER_API_KEYS).
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Deliver only to callback URLs of the form {callback_prefix}{token}; None: to any URL.
    # Under `serve` this is the receiver's own /webhooks/, so the demo is never an open relay.
    callback_prefix: str | None = None
    duration_median: float = 3.0  # log-normal task durations
    duration_sigma: float = 0.3
    time_scale: float = 1.0
    payload: str = "full"  # full (event with the whole video), thin (event with the id), bare
    fail_rate: float = 0.0  # share of tasks that end failed
    drop_rate: float = 0.0  # share of terminal deliveries never sent
    duplicate_rate: float = 0.0  # share sent twice
    reorder_rate: float = 0.0  # share followed by a stale in_progress delivery
    delivery_delay: float = 0.0  # provider seconds between finishing and the first delivery
    bad_signature_rate: float = 0.0  # share of attempts signed with a wrong key
    get_error_rate: float = 0.0  # share of GETs answering 500
    get_throttle_rate: float = 0.0  # share of GETs answering 429 with Retry-After
    retry_after: int = 1
    answer_delay: float = 0.0  # real seconds before POST /v1/videos answers
    send_attempts: int = 5  # delivery attempts per message before the provider gives up
    content_bytes: int = 32 * 1024  # size of each result file served at the content URLs
    content_rate: float = 0.0  # bytes per real second when serving a result file (0: at once)
    seed: int | None = None
    # A simulator that runs for months (the demo under `serve`) keeps this many tasks, forgetting
    # the oldest, and no record of acknowledgements; None keeps everything (tests read it all).
    max_tasks: int | None = None


@dataclass
class SimTask:
    id: str
    body: dict[str, Any]
    created_at: float  # real time
    duration: float  # real seconds until terminal
    final: str  # completed or failed
    callback_url: str | None
    gets: int = 0  # GETs the receiver made for this task
    base_url: str = "https://cdn.example.invalid"  # where this provider serves result files

    def status_at(self, now: float) -> str:
        elapsed = now - self.created_at
        if elapsed >= self.duration:
            return self.final
        return "in_progress" if elapsed >= 0.1 * self.duration else "queued"


class Simulator:
    """A provider in a box. `app` serves the API; `start()`/`stop()` run the delivery sender."""

    def __init__(
        self,
        config: SimConfig,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.tasks: dict[str, SimTask] = {}
        self.gets = 0
        self.deliveries_sent = 0
        self.acknowledged: set[str] = set()  # webhook-ids the receiver answered 2xx
        # An outage on the provider's side: while set, every delivery falls due unsent and is lost.
        self.deliveries_stopped = False
        self.deliveries_lost = 0
        self._rng = random.Random(config.seed)
        self._key = parse_key(config.secret).material if config.secret else None
        self._http = http
        self._own_http = http is None
        self._queue: list[tuple[float, int, str, str, str, int]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._bodies: dict[str, bytes] = {}  # a retried message carries the same bytes
        self._queued: dict[str, int] = {}  # sends of each message still queued or in flight
        self._owed: dict[str, int] = {}  # the same, per task: a task owed a send is never forgotten
        self.app = Starlette(
            routes=[
                Route("/v1/videos", self._create, methods=["POST"]),
                Route("/v1/videos/{video_id:str}", self._retrieve, methods=["GET"]),
                Route("/files/{name:str}", self._file, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        self._sender = asyncio.create_task(self._send_loop(), name="simulator-sender")

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        for sending in list(self._in_flight):
            sending.cancel()
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- the provider API --------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        keys = [k for k in (self.config.api_key, *self.config.api_keys) if k]
        if not keys:
            return True
        given = request.headers.get("authorization", "").encode("latin-1")
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given, f"Bearer {key}".encode())
        return matched

    def _callback_allowed(self, url: object) -> bool:
        prefix = self.config.callback_prefix
        if url is None or prefix is None:
            return True
        if not isinstance(url, str) or not url.startswith(prefix):
            return False
        token = url[len(prefix) :]
        return 16 <= len(token) <= 128 and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        body = {"error": {"type": "invalid_request_error", "message": message}}
        return Response(json.dumps(body), status, media_type="application/json", headers=headers)

    def video(self, task: SimTask, status: str | None = None) -> dict[str, Any]:
        status = status or task.status_at(self.clock())
        body = task.body
        video: dict[str, Any] = {
            "id": task.id,
            "object": "video",
            "status": status,
            "model": body.get("model"),
            "prompt": body.get("prompt"),
            "created_at": int(task.created_at),
            "parameters": {
                k: body[k] for k in ("duration", "resolution", "aspect_ratio", "seed") if k in body
            },
            "content": {},
        }
        if status == "completed":
            video["content"] = {"video_url": f"{task.base_url}/files/{task.id}.mp4"}
            if body.get("return_last_frame"):
                video["content"]["last_frame_url"] = f"{task.base_url}/files/{task.id}.png"
        elif status == "failed":
            video["error"] = {
                "code": "generation_failed",
                "message": "the model could not render this prompt",
            }
        return video

    async def _create(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._error(401, "invalid API key")
        try:
            body = jsonpolicy.loads(await request.body())
        except jsonpolicy.JSONPolicyError:
            return self._error(400, "body is not acceptable JSON")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
            or not isinstance(body.get("prompt"), str)
        ):
            return self._error(400, "model and prompt are required")
        if not self._callback_allowed(body.get("callback_url")):
            return self._error(400, "this simulated provider delivers only to its receiver's callback URLs")
        config = self.config
        duration = config.duration_median * math.exp(self._rng.gauss(0.0, config.duration_sigma))
        task = SimTask(
            id="video_" + secrets.token_hex(12),
            body=body,
            created_at=self.clock(),
            duration=duration / config.time_scale,
            final="failed" if self._rng.random() < config.fail_rate else "completed",
            callback_url=body.get("callback_url"),
            # Where its files are served: under `serve` the simulator is mounted at /simulator,
            # which request.base_url leaves out; the route's own URL has it.
            base_url=str(request.url_for("_file", name="x")).rsplit("/files/", 1)[0],
        )
        self.tasks[task.id] = task
        while config.max_tasks is not None and len(self.tasks) > config.max_tasks:
            oldest = next(iter(self.tasks))
            if oldest in self._owed:
                break  # it waits for its sends: the bound is passed for a moment
            del self.tasks[oldest]
        if task.callback_url:
            self._plan_deliveries(task)
        if config.answer_delay:
            await asyncio.sleep(config.answer_delay)
        return Response(json.dumps(self.video(task)), 200, media_type="application/json")

    async def _retrieve(self, request: Request) -> Response:
        self.gets += 1
        if not self._authorized(request):
            return self._error(401, "invalid API key")
        if self._rng.random() < self.config.get_error_rate:
            return self._error(500, "internal error")
        if self._rng.random() < self.config.get_throttle_rate:
            return self._error(429, "slow down", {"retry-after": str(self.config.retry_after)})
        task = self.tasks.get(request.path_params["video_id"])
        if task is None:
            return self._error(404, "no such video")
        task.gets += 1
        return Response(json.dumps(self.video(task)), 200, media_type="application/json")

    def file_bytes(self, name: str) -> bytes:
        """The result file `name` ({video id}.mp4 or .png): small, real, the same every time."""
        return result_file(name, self.config.content_bytes)

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        video_id, _, extension = name.rpartition(".")
        task = self.tasks.get(video_id)
        if task is None or extension not in ("mp4", "png") or task.status_at(self.clock()) != "completed":
            return self._error(404, "no such file")
        data = self.file_bytes(name)
        media_type = "video/mp4" if extension == "mp4" else "image/png"
        rate = self.config.content_rate
        if not rate:
            return Response(data, media_type=media_type)

        async def slowly() -> AsyncIterator[bytes]:
            step = max(1, int(rate / 20))
            for start in range(0, len(data), step):
                yield data[start : start + step]
                await asyncio.sleep(step / rate)  # a slow link, on purpose

        return StreamingResponse(slowly(), media_type=media_type, headers={"content-length": str(len(data))})

    # -- deliveries --------------------------------------------------------------------------

    def _plan_deliveries(self, task: SimTask) -> None:
        config = self.config
        if self._rng.random() < config.drop_rate:
            return
        due = task.created_at + task.duration + config.delivery_delay / config.time_scale
        message = "msg_" + secrets.token_hex(12)
        self._push(due, task.id, message, task.final)
        if self._rng.random() < config.duplicate_rate:
            self._push(due + 0.05, task.id, message, task.final)
        if self._rng.random() < config.reorder_rate:
            self._push(due + 0.1, task.id, "msg_" + secrets.token_hex(12), "in_progress")

    def _push(self, due: float, video_id: str, message: str, status: str, attempt: int = 1) -> None:
        heapq.heappush(self._queue, (due, next(self._seq), video_id, message, status, attempt))
        self._queued[message] = self._queued.get(message, 0) + 1
        self._owed[video_id] = self._owed.get(video_id, 0) + 1
        self._wakeup.set()

    def _done(self, video_id: str, message: str) -> None:
        """One send of `message` is over (sent, given up or dropped): its body goes with its last."""
        if _release(self._queued, message):
            self._bodies.pop(message, None)
        _release(self._owed, video_id)

    def payload(self, task: SimTask, status: str) -> bytes:
        video = self.video(task, status)
        if self.config.payload == "bare":
            return json.dumps(video).encode()
        kind = "video.failed" if status == "failed" else "video.completed"
        if status not in ("completed", "failed"):
            return json.dumps(video).encode()  # progress updates travel as bare objects
        data = {"id": task.id} if self.config.payload == "thin" else video
        event = {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "type": kind,
            "created_at": int(self.clock()),
            "data": data,
        }
        return json.dumps(event).encode()

    def signed_headers(self, message: str, body: bytes) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._key is None:
            return headers
        key = self._key
        if self._rng.random() < self.config.bad_signature_rate:
            key = secrets.token_bytes(24)
        timestamp = str(int(self.clock()))
        headers.update(
            {
                "webhook-id": message,
                "webhook-timestamp": timestamp,
                "webhook-signature": sign_v1(key, message, timestamp, body),
            }
        )
        return headers

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            due = self._queue[0][0]
            delay = due - self.clock()
            if delay > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=min(delay, 1.0))
                continue
            _, _, video_id, message, status, attempt = heapq.heappop(self._queue)
            if self.deliveries_stopped:
                self.deliveries_lost += 1
                self._done(video_id, message)
                continue
            sending = asyncio.create_task(self._send(video_id, message, status, attempt))
            self._in_flight.add(sending)
            sending.add_done_callback(self._in_flight.discard)

    async def _send(self, video_id: str, message: str, status: str, attempt: int) -> None:
        try:
            await self._attempt(video_id, message, status, attempt)
        finally:
            self._done(video_id, message)

    async def _attempt(self, video_id: str, message: str, status: str, attempt: int) -> None:
        task = self.tasks.get(video_id)
        if task is None:
            return  # forgotten (max_tasks)
        assert task.callback_url is not None and self._http is not None
        body = self._bodies.get(message)
        if body is None:
            body = self._bodies[message] = self.payload(task, status)
        try:
            response = await self._http.post(
                task.callback_url, content=body, headers=self.signed_headers(message, body)
            )
            ok = 200 <= response.status_code < 300
        except httpx.HTTPError:
            ok = False
        if ok and self.config.max_tasks is None:
            self.acknowledged.add(message)
        self.deliveries_sent += 1
        if not ok and attempt < self.config.send_attempts:
            backoff = 0.5 * 2 ** (attempt - 1)
            self._push(self.clock() + backoff, video_id, message, status, attempt + 1)


def _release(counts: dict[str, int], key: str) -> bool:
    """Count one down; True when none is left (the key is gone)."""
    left = counts.pop(key, 1) - 1
    if left > 0:
        counts[key] = left
    return left <= 0


def _png(width: int, height: int, seed: bytes) -> bytes:
    """A real PNG: a gradient tinted by `seed`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(
        b"\x00" + b"".join(bytes(((x + seed[0]) % 256, (y + seed[1]) % 256, seed[2])) for x in range(width))
        for y in range(height)
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def result_file(name: str, size: int) -> bytes:
    """{id}.png: a small real PNG. {id}.mp4: an ISO media file (ftyp box, then an mdat box of
    bytes derived from the name) of `size` bytes: what a player sniffs, and checksums can match."""
    seed = hashlib.sha256(name.encode()).digest()
    if name.endswith(".png"):
        return _png(64, 36, seed)
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
    payload_size = max(0, size - len(ftyp) - 8)
    blocks = (payload_size // 32) + 1
    payload = b"".join(hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(blocks))[
        :payload_size
    ]
    return ftyp + struct.pack(">I", payload_size + 8) + b"mdat" + payload


def dev_secret() -> str:
    """A fresh whsec_ secret for the in-process simulator."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
