"""/v1/deliveries: list, inspect and replay stored inbound deliveries, and their health by model."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.errors import (
    Conflict,
    NotFound,
)
from receiver.routes.http import authorized, json_response, store_call
from receiver.routes.openapi import Operation, operation
from receiver.routes.schemas import (
    Delivery,
    DeliveryHealthList,
    DeliveryList,
    DeliveryListQuery,
    DeliveryReplay,
    convert_query,
    given,
)
from receiver.routes.views import delivery_view, list_body
from receiver.routes.webhooks import reprocess
from receiver.rules.ids import parse_id

log = logging.getLogger("receiver.routes.deliveries")


@operation(
    Operation(
        "listDeliveries",
        "Stored inbound deliveries, newest first",
        tag="deliveries",
        answer=DeliveryList,
        query=DeliveryListQuery,
        errors=(400,),
    )
)
async def list_deliveries(request: Request) -> Response:
    ctx = authorized(request)
    query = convert_query(request.query_params, DeliveryListQuery)
    page = await ctx.store.list_deliveries(given(query.video_id) or None, query.limit, given(query.after))
    return json_response(list_body([delivery_view(d) for d in page.rows], page.has_more))


@operation(
    Operation(
        "replayDelivery",
        "Run a stored delivery through processing again",
        tag="deliveries",
        answer=DeliveryReplay,
        errors=(404, 409, 503),
    )
)
async def replay_delivery(request: Request) -> Response:
    ctx = authorized(request)
    delivery = await ctx.store.get_delivery(parse_id("delivery", request.path_params["delivery_id"]))
    if delivery is None:
        raise NotFound("no such delivery", param="id")
    if delivery.pruned:
        raise Conflict(
            "the delivery's body was pruned (RECEIVER_RETENTION): there is nothing to replay",
            param="id",
            code="delivery_pruned",
        )
    result = await store_call(ctx, reprocess(ctx, delivery))
    fresh = await ctx.store.get_delivery(delivery.id)
    view = delivery_view(fresh or delivery)
    view["replay_outcome"] = result
    return json_response(view)


@operation(
    Operation(
        "getDeliveryHealth",
        "Per model: are the provider's deliveries arriving, with the evidence",
        tag="deliveries",
        answer=DeliveryHealthList,
    )
)
async def delivery_health(request: Request) -> Response:
    """Per model: are the provider's deliveries arriving, and the evidence for the judgement."""
    ctx = authorized(request)
    data = [
        {
            "object": "delivery_health",
            "model": model,
            "state": health.state,
            "since": health.since,
            "checked_at": health.checked_at,
            "evidence": {
                "delivered": health.evidence.delivered,
                "missed": health.evidence.missed,
                "overdue": health.evidence.overdue,
                "expected_since_last_delivery": health.evidence.expected,
                "last_delivery_at": health.evidence.last_delivery_at,
            },
        }
        for model, health in ctx.scheduler.health().items()
    ]
    return json_response({"object": "list", "data": data, "has_more": False})


@operation(
    Operation(
        "getDelivery",
        "One stored inbound delivery as received (credentials redacted)",
        tag="deliveries",
        answer=Delivery,
        errors=(404,),
    )
)
async def get_delivery(request: Request) -> Response:
    ctx = authorized(request)
    delivery = await ctx.store.get_delivery(parse_id("delivery", request.path_params["delivery_id"]))
    if delivery is None:
        raise NotFound("no such delivery", param="id")
    return json_response(delivery_view(delivery))


def routes() -> list[Route]:
    return [
        Route("/v1/health/deliveries", delivery_health, methods=["GET"]),
        Route("/v1/deliveries", list_deliveries, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id:str}", get_delivery, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id:str}/replay", replay_delivery, methods=["POST"]),
    ]
