"""create_app(): the routes, the middleware-free error mapping, and a lifespan that owns resources."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from receiver.context import Context
from receiver.errors import ApiError, ReceiverError, to_api_error
from receiver.media import media_store
from receiver.outbound.destinations import Destinations
from receiver.outbound.provider import Provider
from receiver.outbound.session import outbound_session
from receiver.routes import dashboard, deliveries, events, stats, stream, subscriptions, videos, webhooks
from receiver.routes.guard import CrossSiteGuard
from receiver.routes.http import json_response
from receiver.routes.openapi import Operation, openapi_json, operation
from receiver.routes.schemas import Health
from receiver.rules.signatures import parse_key
from receiver.secrets_at_rest import SecretBox, seal_store
from receiver.settings import Settings
from receiver.simulator.provider import SimConfig, Simulator, dev_secret
from receiver.workers.capture import Capturer, capture_session
from receiver.workers.dispatcher import Dispatcher
from receiver.workers.poller import Poller
from receiver.workers.pruner import Pruner
from receiver.workers.schedule import Scheduler
from receiver.workers.sweeper import Sweeper
from store import Store, open_store

__all__ = ["Receiver", "create_app"]

log = logging.getLogger("receiver")

SIMULATOR_PATH = "/simulator"
SIMULATOR_MAX_TASKS = 10_000  # the built-in demo provider's memory stays bounded under `serve`
_STOP_GRACE = 10.0


async def _receiver_error(request: Request, exc: Exception) -> Response:
    """Every error raised on purpose, by class, through the one mapping (receiver.errors)."""
    assert isinstance(exc, ReceiverError)
    error = to_api_error(exc)
    if error.status == 503:
        request.app.state.ctx.unavailable.note(error.code)
    elif error.status >= 500 and not isinstance(exc, ApiError):
        log.error("%s on %s %s", type(exc).__name__, request.method, request.url.path)
    return json_response(error.body(), error.status, error.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {
        "error": {"type": "invalid_request_error", "code": code, "message": str(exc.detail), "param": None}
    }
    return json_response(body, exc.status_code, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    body = {
        "error": {"type": "api_error", "code": "internal_error", "message": "internal error", "param": None}
    }
    return json_response(body, 500)


@operation(Operation("health", "The process is up", tag="operate", answer=Health, authenticated=False))
async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@operation(Operation("metrics", "Prometheus metrics", tag="operate", media="text/plain", authenticated=False))
async def metrics(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    body = await ctx.metrics.render(ctx.store, ctx.clock(), ctx.scheduler.health())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@operation(
    Operation(
        "ready",
        "Store writable and workers running (503 with the problems otherwise)",
        tag="operate",
        answer=Health,
        other=((503, Health),),
        authenticated=False,
    )
)
async def readyz(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    problems = []
    try:
        await asyncio.wait_for(ctx.store.ping(), timeout=2.0)
    except Exception:
        problems.append("store not writable")
    if ctx.writes.failing:
        problems.append("recent writes failed")
    if not ctx.workers or any(w.done() for w in ctx.workers):
        problems.append("workers not running")
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, 503)
    return json_response({"status": "ready"})


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    http: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.time,
) -> Receiver:
    """The whole service. A store or http client passed in belongs to the caller; anything the
    app makes itself it also closes. With no provider configured, the built-in simulator is
    mounted at /simulator and used as the provider."""
    # httpx logs every request URL at INFO; our callback URLs are credentials.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    keys = settings.webhook_keys
    simulator: Simulator | None = None
    simulator_key: str | None = None
    if settings.simulated:
        secret = next((k for k in keys if k.scheme == "whsec"), None)
        if secret is None:
            text = dev_secret()
            keys = (*keys, parse_key(text))
        else:
            text = "whsec_" + base64.b64encode(secret.material).decode()
        # The built-in simulator is a demo of the provider for this receiver only: it takes the
        # receiver's own API keys (and one the receiver itself uses), and delivers only to
        # this receiver's callback URLs.
        simulator_key = secrets.token_urlsafe(32) if settings.api_keys else None
        simulator = Simulator(
            SimConfig(
                secret=text,
                duration_median=2.0,
                api_key=simulator_key,
                api_keys=settings.api_keys,
                callback_prefix=f"{settings.public_url}/webhooks/",
                max_tasks=SIMULATOR_MAX_TASKS,
            ),
            clock=clock,
        )
    elif not keys:
        log.warning(
            "RECEIVER_WEBHOOK_SECRETS is unset: deliveries cannot be verified, "
            "results will come by polling alone"
        )
    if not settings.api_keys:
        log.warning("RECEIVER_API_KEYS is unset: /v1 is open to anyone who can reach it")
    box = SecretBox(settings.secret_keys)
    if not box.enabled:
        log.warning(
            "RECEIVER_SECRET_KEY is unset: subscription secrets and broker passwords are stored in clear"
        )
    media = media_store(settings.media_path(), settings.media_s3)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            own_store = store is None
            the_store = store or open_store(settings.database_url)
            if own_store:
                await the_store.open()
                stack.push_async_callback(the_store.close)
            # Secrets still in clear are sealed now that a key is set; one no key opens stops the start.
            sealed = await seal_store(the_store, box)
            if sealed:
                log.info("sealed the secrets of %d subscriptions with RECEIVER_SECRET_KEY", sealed)
            client = http
            if client is None:
                client = httpx.AsyncClient(
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
                )
                stack.push_async_callback(client.aclose)
            if simulator is not None:
                await simulator.start()
                stack.push_async_callback(simulator.stop)
                host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
                base = f"http://{host}:{settings.port}{SIMULATOR_PATH}"
            else:
                assert settings.provider_url is not None
                base = settings.provider_url
            provider = Provider(
                client, base, simulator_key or settings.provider_api_key, float(settings.provider_timeout)
            )
            scheduler = Scheduler(
                the_store, settings, clock=clock, fixed_interval=settings.poll_fixed_interval
            )
            ctx = Context(
                settings=settings,
                store=the_store,
                provider=provider,
                clock=clock,
                webhook_keys=keys,
                scheduler=scheduler,
                secrets=box,
            )
            app.state.ctx = ctx
            stack.callback(ctx.refused.close)
            stack.callback(ctx.unavailable.close)
            the_store.on_change(ctx.heard)
            await media.open()
            stack.push_async_callback(media.close)
            app.state.media = media
            stop = asyncio.Event()
            poller = Poller(ctx, concurrency=settings.poll_concurrency, rate=settings.poll_rate)
            ctx.workers.append(asyncio.create_task(poller.run(stop), name="poller"))
            app.state.poller = poller
            scheduler.on_stopped = ctx.wake_poller
            ctx.workers.append(asyncio.create_task(scheduler.watch(stop), name="delivery-health"))
            outbound = outbound_session(settings.outbound_allow, settings.fanout_concurrency)
            stack.push_async_callback(outbound.close)
            destinations = Destinations(
                outbound,
                settings.outbound_allow,
                float(settings.fanout_timeout),
                connections=settings.fanout_concurrency,
            )
            stack.push_async_callback(destinations.close)
            dispatcher = Dispatcher(
                ctx,
                destinations,
                concurrency=settings.fanout_concurrency,
                per_subscriber=settings.fanout_per_subscriber,
            )
            ctx.workers.append(asyncio.create_task(dispatcher.run(stop), name="dispatcher"))
            app.state.dispatcher = dispatcher
            sweeper = Sweeper(ctx)
            ctx.workers.append(asyncio.create_task(sweeper.run(stop), name="sweeper"))
            app.state.sweeper = sweeper
            pruner = Pruner(the_store, settings, media, clock=clock, metrics=ctx.metrics)
            ctx.workers.append(asyncio.create_task(pruner.run(stop), name="pruner"))
            app.state.pruner = pruner
            downloads = capture_session(settings.outbound_allow)
            stack.push_async_callback(downloads.close)
            capturer = Capturer(ctx, downloads, media, trusted_origin=base if simulator is not None else None)
            ctx.workers.append(asyncio.create_task(capturer.run(stop), name="capturer"))
            app.state.capturer = capturer

            async def stop_workers() -> None:
                stop.set()
                _, pending = await asyncio.wait(ctx.workers, timeout=_STOP_GRACE)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*ctx.workers, return_exceptions=True)

            stack.push_async_callback(stop_workers)
            yield

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *videos.routes(),
        *deliveries.routes(),
        *stats.routes(),
        *subscriptions.routes(),
        *stream.routes(),
        *events.routes(),
        *dashboard.routes(),
    ]
    if simulator is not None:
        routes.append(Mount(SIMULATOR_PATH, app=simulator.app))
    middleware = [
        Middleware(
            CrossSiteGuard,
            public_url=settings.public_url,
            listen_host=settings.host,
            allowed_hosts=settings.allowed_hosts,
            cors_origins=settings.cors_origins,
        )
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "idempotency-key", "last-event-id"],
                expose_headers=["idempotent-replayed", "retry-after"],
                max_age=600,
            )
        )
    starlette = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ReceiverError: _receiver_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    # A redirect to the slash-less path would copy the request's Host into Location: a 404 it is.
    starlette.router.redirect_slashes = False
    return Receiver(starlette, webhooks.IngestApp(lambda: starlette.state.ctx))


class Receiver:
    """The ASGI app: /webhooks goes straight to the ingest app, everything else to Starlette
    (which also runs the lifespan)."""

    def __init__(self, app: Starlette, webhooks: webhooks.IngestApp) -> None:
        self.app = app
        self._webhooks = webhooks

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"] == "/webhooks" or scope["path"].startswith("/webhooks/")
        ):
            await self._webhooks(scope, receive, send)
        else:
            await self.app(scope, receive, send)
