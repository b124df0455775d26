"""GET /openapi.json: an OpenAPI 3.1 document built from the routes and their msgspec shapes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.routes import schemas
from receiver.rules.ids import KINDS

__all__ = ["WEBHOOK_OPERATIONS", "Header", "Operation", "document", "openapi_json", "operation", "operations"]

F = TypeVar("F", bound=Callable[..., Any])

_REASONS = {
    304: "Not modified: the If-None-Match ETag is current",
    400: "Bad input: the error's param names the field",
    401: "Missing or wrong API key (when RECEIVER_API_KEYS is set) or webhook signature",
    404: "No such object",
    409: "An idempotent submit with this key is still running, or a pruned delivery cannot be replayed",
    410: "The kept file was deleted when its retention ended (content_expired)",
    413: "The body is too large",
    416: "The Range cannot be satisfied",
    429: "The provider is rate limiting us (Retry-After says when to retry)",
    502: "The provider failed or answered with something unusable",
    503: "The store cannot take writes right now; retry",
    504: "The provider did not answer in time",
}


@dataclass(frozen=True)
class Header:
    name: str
    description: str
    schema: dict[str, Any] = field(
        default_factory=lambda: {"type": "string", "minLength": 1, "maxLength": 255}
    )


@dataclass(frozen=True)
class Operation:
    """What the document says about one route and method."""

    id: str
    summary: str
    tag: str
    answer: Any = None  # the JSON answer's type (None: see `media`)
    media: str | tuple[str, ...] = "application/json"  # the answer's media type(s) when not a JSON shape
    body: Any = None  # the JSON request body's type
    multipart: bool = False  # the body may also come as multipart/form-data
    query: type | None = None  # a Struct whose fields are the query parameters
    headers: tuple[Header, ...] = ()
    errors: tuple[int, ...] = ()
    authenticated: bool = True  # needs the bearer key when RECEIVER_API_KEYS is set
    ranges: bool = False  # answers 206 to a Range request
    other: tuple[tuple[int, Any], ...] = ()  # (status, JSON type or None: no body) answers, not errors
    path: tuple[tuple[str, dict[str, Any]], ...] = ()  # (name, schema) of path parameters not ids
    links: tuple[tuple[str, str], ...] = ()  # (operationId, its path parameter) fed by this answer's id


def operation(op: Operation) -> Callable[[F], F]:
    """Attach `op` to an endpoint; document() reads it from the route."""

    def attach(endpoint: F) -> F:
        endpoint.__dict__["openapi_operation"] = op
        return endpoint

    return attach


def operations(routes: Iterable[BaseRoute]) -> list[tuple[str, str, Operation | None]]:
    """(path, method, operation) of every route; operation None when it was never described."""
    found: list[tuple[str, str, Operation | None]] = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = re.sub(r"{([^}:]+)(:[^}]*)?}", r"{\1}", route.path)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((path, method.lower(), getattr(route.endpoint, "openapi_operation", None)))
    return found


def _ref(shape: Any) -> dict[str, Any]:
    if isinstance(shape, type) and issubclass(shape, msgspec.Struct):
        return {"$ref": f"#/components/schemas/{shape.__name__}"}
    schema: dict[str, Any] = msgspec.json.schema(shape)
    return schema


def _parameters(path: str, op: Operation, components: dict[str, Any]) -> list[dict[str, Any]]:
    given = dict(op.path)
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": given.get(name) or _path_schema(name)}
        for name in re.findall(r"{([^}]+)}", path)
    ]
    if op.query is not None:
        schema = components[op.query.__name__]
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    for header in op.headers:
        params.append(
            {
                "name": header.name,
                "in": "header",
                "required": False,
                "description": header.description,
                "schema": header.schema,
            }
        )
    return params


def _path_kind(name: str) -> str | None:
    """The receiver.rules.ids kind a path parameter holds (video_id -> video), if it is one of ours."""
    kind = name.removesuffix("_id")
    return kind if name.endswith("_id") and kind in KINDS else None


def _path_schema(name: str) -> dict[str, Any]:
    kind = _path_kind(name)
    if kind is None:
        return {"type": "string", "minLength": 1}
    return {"type": "string", "pattern": f"^(?:{KINDS[kind].pattern})$"}


def _form_schema(shape: type, components: dict[str, Any]) -> dict[str, Any]:
    """The multipart form of a JSON shape: the same fields, sent as text parts (nested objects and
    lists as `name[key]` and `name[]` parts, as the OpenAI SDK sends them)."""
    schema = dict(components[shape.__name__])
    schema["title"] = f"{shape.__name__}Form"
    return schema


def _operation(path: str, op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    content: dict[str, Any] = {}
    if op.answer is not None:
        content["application/json"] = {"schema": _ref(op.answer)}
    medias = () if op.answer is not None else (op.media,) if isinstance(op.media, str) else op.media
    for media in medias:
        if media == "application/json":
            content[media] = {"schema": {"type": "object"}}
        elif media.startswith("text/"):
            content[media] = {"schema": {"type": "string"}}
        else:
            content[media] = {"schema": {"type": "string", "format": "binary"}}
    answers["200"] = {"description": op.summary, "content": content}
    if op.links:
        answers["200"]["links"] = {
            target: {"operationId": target, "parameters": {param: "$response.body#/id"}}
            for target, param in op.links
        }
    if op.ranges:
        answers["206"] = {"description": "The requested byte range", "content": content}
    for status, shape in op.other:
        answers[str(status)] = {"description": _REASONS.get(status, op.summary)}
        if shape is not None:
            answers[str(status)]["content"] = {"application/json": {"schema": _ref(shape)}}
    errors = set(op.errors)
    if any(_path_kind(name) for name in re.findall(r"{([^}]+)}", path)):
        errors.add(400)  # receiver.rules.ids refuses an id of the wrong shape before any lookup
    if op.authenticated:
        errors.add(401)
    for status in sorted(errors):
        answers[str(status)] = {
            "description": _REASONS[status],
            "content": {"application/json": {"schema": _ref(schemas.ErrorBody)}},
        }
    result: dict[str, Any] = {
        "operationId": op.id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(path, op, components),
        "responses": answers,
    }
    if op.body is not None:
        bodies = {"application/json": {"schema": _ref(op.body)}}
        if op.multipart:
            bodies["multipart/form-data"] = {"schema": _form_schema(op.body, components)}
        result["requestBody"] = {"required": True, "content": bodies}
    if op.authenticated:
        result["security"] = [{"bearer": []}]
    else:
        result["security"] = []
    return result


def document(
    routes: Iterable[BaseRoute], extra: Sequence[tuple[str, str, Operation]] = (), version: str = "0"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (described ones) and `extra` (routes served outside
    the router, such as the webhook endpoints)."""
    ops = [(p, m, o) for p, m, o in operations(routes) if o is not None]
    ops += extra
    shapes: set[type] = {schemas.ErrorBody}
    for _, _, op in ops:
        shapes.update(
            t
            for t in (op.answer, op.body, op.query, *(shape for _, shape in op.other))
            if isinstance(t, type) and issubclass(t, msgspec.Struct)
        )
    _, components = msgspec.json.schema_components(
        sorted(shapes, key=lambda t: t.__name__), ref_template="#/components/schemas/{name}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op in ops:
        paths.setdefault(path, {})[method] = _operation(path, op, components)
    for query in {op.query for _, _, op in ops if op.query is not None}:
        components.pop(query.__name__, None)  # described as parameters, not as a body
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "receiver",
            "version": version,
            "description": "Webhook receiver for asynchronous video-generation APIs. Errors are "
            '{"error": {"type", "code", "message", "param"}}; lists are '
            '{"object": "list", "data": [...], "first_id", "last_id", "has_more": bool}, paged by '
            "limit and after (pass the last page's last_id as after, as the OpenAI SDK does).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# POST /webhooks and /webhooks/{token} are served by the bare ingest app, outside the router.
_SIGNATURE_HEADERS = (
    Header("webhook-id", "Standard Webhooks message id (also svix-id, x-webhook-id)"),
    Header("webhook-timestamp", "Standard Webhooks timestamp, Unix seconds"),
    Header("webhook-signature", "Standard Webhooks signatures: v1,<base64> or v1a,<base64>, space-separated"),
    Header("x-openrouter-signature", "OpenRouter style: t=<ts>,v1=<hex>"),
)


def _delivery(op_id: str, summary: str, errors: tuple[int, ...]) -> Operation:
    return Operation(
        op_id,
        summary,
        tag="webhooks",
        answer=schemas.DeliveryAck,
        body=dict[str, Any],  # any accepted payload shape; checked after the signature
        headers=_SIGNATURE_HEADERS,
        errors=errors,
        authenticated=False,
    )


WEBHOOK_OPERATIONS: tuple[tuple[str, str, Operation], ...] = (
    (
        "/webhooks",
        "post",
        _delivery(
            "receiveWorkspaceDelivery",
            "Take a provider's delivery on the workspace-wide callback URL (signature required)",
            (400, 401, 413, 503),
        ),
    ),
    (
        "/webhooks/{token}",
        "post",
        _delivery(
            "receiveTaskDelivery",
            "Take a provider's delivery on a task's own callback URL",
            (400, 401, 404, 413, 503),
        ),
    ),
)


@operation(Operation("getOpenAPI", "This document (OpenAPI 3.1)", tag="operate", authenticated=False))
async def openapi_json(request: Request) -> Response:
    body: bytes | None = getattr(request.app.state, "openapi", None)
    if body is None:
        body = msgspec.json.encode(document(request.app.routes, WEBHOOK_OPERATIONS, version=_version()))
        request.app.state.openapi = body
    return Response(body, media_type="application/json")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("receiver")
    except PackageNotFoundError:
        return "0"
