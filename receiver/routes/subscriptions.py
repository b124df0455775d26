"""/v1/subscriptions: who gets each event, over HTTP or a broker; pause, resume, delete."""

from __future__ import annotations

import base64
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.context import Context
from receiver.errors import InvalidRequest, NotFound, OverLimit
from receiver.outbound.destinations import check_target
from receiver.routes.http import (
    authorized,
    check_outbound_name,
    check_outbound_url,
    json_response,
    read_json_object,
    store_call,
)
from receiver.routes.openapi import Operation, operation
from receiver.routes.schemas import (
    Subscription,
    SubscriptionCreate,
    SubscriptionList,
    SubscriptionListQuery,
    convert,
    convert_query,
    given,
)
from receiver.routes.views import list_body, subscription_view
from receiver.rules.ids import parse_id
from receiver.rules.records import SubscriptionRow
from receiver.rules.signatures import SecretFormatError, parse_key

__all__ = ["routes"]


@operation(
    Operation(
        "createSubscription",
        "Subscribe a URL to events (answers with its whsec_ secret)",
        tag="subscriptions",
        answer=Subscription,
        body=SubscriptionCreate,
        errors=(400, 413, 503),
        links=tuple(
            (op, "subscription_id")
            for op in ("getSubscription", "pauseSubscription", "resumeSubscription", "deleteSubscription")
        ),
    )
)
async def create_subscription(request: Request) -> Response:
    ctx = authorized(request)
    body = convert(await read_json_object(request, 64 * 1024), SubscriptionCreate)
    url = check_outbound_url(ctx.settings, body.url, "url", brokers=True)
    try:
        check_target(url)
    except ValueError as exc:
        raise InvalidRequest(f"url: {exc}", param="url", code="invalid_url") from None
    await check_outbound_name(ctx.settings, url, "url")
    events: list[str] | None = sorted(set(body.events)) if body.events else None
    secret = body.secret
    if secret is None:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    else:
        try:
            if parse_key(secret).scheme != "whsec":
                raise SecretFormatError("not whsec_")
        except SecretFormatError:
            raise InvalidRequest("secret must be a whsec_<base64> secret", param="secret") from None
    limit = ctx.settings.max_subscriptions
    try:
        row = await store_call(
            ctx,
            ctx.store.create_subscription(
                ctx.secrets.seal_url(url), events, ctx.secrets.seal_secret(secret), ctx.clock(), limit=limit
            ),
        )
    except OverLimit:
        raise InvalidRequest(
            f"there are {limit} subscriptions already, the most RECEIVER_MAX_SUBSCRIPTIONS allows;"
            " delete one first",
            code="too_many_subscriptions",
        ) from None
    return json_response(subscription_view(row, secret=ctx.secrets))


@operation(
    Operation(
        "listSubscriptions",
        "Subscriptions, newest first",
        tag="subscriptions",
        answer=SubscriptionList,
        query=SubscriptionListQuery,
        errors=(400,),
    )
)
async def list_subscriptions(request: Request) -> Response:
    ctx = authorized(request)
    query = convert_query(request.query_params, SubscriptionListQuery)
    page = await ctx.store.list_subscriptions(query.limit, given(query.after))
    return json_response(list_body([subscription_view(s) for s in page.rows], page.has_more))


async def _subscription(ctx: Context, request: Request) -> SubscriptionRow:
    row = await ctx.store.get_subscription(parse_id("subscription", request.path_params["subscription_id"]))
    if row is None or row.task_pk is not None:
        raise NotFound("no such subscription", param="id")
    return row


@operation(
    Operation(
        "getSubscription",
        "A subscription, with its secret",
        tag="subscriptions",
        answer=Subscription,
        errors=(404,),
    )
)
async def get_subscription(request: Request) -> Response:
    ctx = authorized(request)
    return json_response(subscription_view(await _subscription(ctx, request), secret=ctx.secrets))


async def _set_status(request: Request, status: str) -> Response:
    ctx = authorized(request)
    row = await _subscription(ctx, request)
    updated = await store_call(ctx, ctx.store.set_subscription_status(row.id, status, ctx.clock()))
    if updated is None:
        raise NotFound("no such subscription", param="id")
    if status == "active":
        ctx.fanout_wakeup.set()  # held sends may go now
    return json_response(subscription_view(updated) | ({"deleted": True} if status == "deleted" else {}))


@operation(
    Operation(
        "deleteSubscription",
        "Delete a subscription",
        tag="subscriptions",
        answer=Subscription,
        errors=(404, 503),
    )
)
async def delete_subscription(request: Request) -> Response:
    return await _set_status(request, "deleted")


@operation(
    Operation(
        "pauseSubscription",
        "Hold a subscription's sends (kept, not lost)",
        tag="subscriptions",
        answer=Subscription,
        errors=(404, 503),
    )
)
async def pause_subscription(request: Request) -> Response:
    return await _set_status(request, "paused")


@operation(
    Operation(
        "resumeSubscription",
        "Let a paused subscription's sends go",
        tag="subscriptions",
        answer=Subscription,
        errors=(404, 503),
    )
)
async def resume_subscription(request: Request) -> Response:
    return await _set_status(request, "active")


def routes() -> list[Route]:
    return [
        Route("/v1/subscriptions", create_subscription, methods=["POST"]),
        Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id:str}", get_subscription, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id:str}", delete_subscription, methods=["DELETE"]),
        Route("/v1/subscriptions/{subscription_id:str}/pause", pause_subscription, methods=["POST"]),
        Route("/v1/subscriptions/{subscription_id:str}/resume", resume_subscription, methods=["POST"]),
    ]
