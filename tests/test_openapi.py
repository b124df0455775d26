"""GET /openapi.json covers every route, and the shapes it is built from validate requests."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.routing import Mount

from receiver.app import SIMULATOR_PATH
from receiver.errors import InvalidRequest
from receiver.routes import schemas
from receiver.routes.openapi import WEBHOOK_OPERATIONS, operations
from tests.conftest import StackFactory

pytestmark = pytest.mark.anyio


async def test_every_mounted_route_is_in_the_document(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        answer = await stack.client.get(f"{stack.url}/openapi.json")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        document = answer.json()
        assert document["openapi"].startswith("3.1")
        mounted = operations(stack.app.app.routes)
        assert mounted, "no routes found"
        undescribed = [(path, method) for path, method, op in mounted if op is None]
        assert undescribed == [], "routes with no @operation"
        for path, method, _ in [*mounted, *WEBHOOK_OPERATIONS]:
            assert method in document["paths"].get(path, {}), f"{method.upper()} {path} missing"
        # The only other thing mounted is the demo provider (not part of this API).
        mounts = [r for r in stack.app.app.routes if isinstance(r, Mount)]
        assert all(m.path == SIMULATOR_PATH for m in mounts)
        # Every error answer has the one error shape; every list the list shape.
        for path, methods in document["paths"].items():
            for method, op in methods.items():
                for status, answer_doc in op["responses"].items():
                    if status.startswith(("4", "5")) and (path, method) != ("/readyz", "get"):
                        schema = answer_doc["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
        schemas_doc = document["components"]["schemas"]
        lists = ("VideoList", "DeliveryList", "SubscriptionList", "EventList", "SendList")
        for name in (*lists, "SubscriberHealthList"):
            assert {"object", "data", "first_id", "last_id", "has_more"} <= set(schemas_doc[name]["required"])
        create = document["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
        assert set(create) == {"application/json", "multipart/form-data"}
        assert schemas_doc["VideoCreate"]["additionalProperties"] is False


async def test_the_document_needs_no_key(make_stack: StackFactory) -> None:
    async with make_stack(api_keys=("k1",)) as stack:
        assert (await stack.client.get(f"{stack.url}/openapi.json")).status_code == 200
        assert (await stack.client.get(f"{stack.url}/v1/videos")).status_code == 401


async def test_every_v1_operation_in_the_document_needs_a_key(make_stack: StackFactory) -> None:
    """Each /v1 operation, its path parameters filled with well-shaped ids, answers 401 without a
    key, before it reads a body or looks anything up."""
    ids = {
        "video_id": "video_x",
        "delivery_id": "dlv_1",
        "subscription_id": "sub_x",
        "event_id": "evt_x",
        "replay_id": "rpl_x",
    }
    async with make_stack(api_keys=("k1",)) as stack:
        document = (await stack.client.get(f"{stack.url}/openapi.json")).json()
        tried = []
        for path, operations in document["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for method in operations:
                if method not in ("get", "post", "delete"):
                    continue
                url = stack.url + path.format(**ids)
                answer = await stack.client.request(method.upper(), url, json={})
                tried.append((method, path, answer.status_code))
        assert [t for t in tried if t[2] != 401] == []
        assert len(tried) >= 20


async def test_every_unknown_field_is_named(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        answer = await stack.submit({"model": "m", "prompt": "p", "size": "1x1", "colour": "red"})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "unknown_parameter" and error["param"] == "colour"
        assert "colour" in error["message"] and "size" in error["message"]


CONVERSIONS: list[tuple[dict[str, Any], str | None, str]] = [
    ({"prompt": "p"}, "model", "missing_field"),
    ({"model": "m", "prompt": " \n"}, "prompt", "invalid_request"),
    ({"model": "m", "prompt": "p", "duration": 2**64}, "duration", "invalid_request"),
    ({"model": "m", "prompt": "p", "seed": -(2**63) - 1}, "seed", "invalid_request"),
    ({"model": "m", "prompt": "p", "duration": None}, "duration", "invalid_request"),
    ({"model": "m", "prompt": "p", "duration": 5.0}, "duration", "invalid_request"),
    ({"model": "m", "prompt": "p", "return_last_frame": "true"}, "return_last_frame", "invalid_request"),
    ({"model": "m", "prompt": "p", "metadata": {"a": 1}, "frame_images": [{"x": 1}]}, None, ""),
]


@pytest.mark.parametrize(("body", "param", "code"), CONVERSIONS)
def test_conversion_names_the_field(body: dict[str, Any], param: str | None, code: str) -> None:
    if param is None:
        assert schemas.to_dict(schemas.convert(body, schemas.VideoCreate)) == body
        return
    with pytest.raises(InvalidRequest) as caught:
        schemas.convert(body, schemas.VideoCreate)
    assert (caught.value.param, caught.value.code) == (param, code)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"limit": "7", "status": "failed", "other": "x"}, (7, "failed")),
        ({}, (20, None)),
        ({"limit": "0"}, "limit"),
        ({"limit": "\u0663"}, "limit"),  # non-ASCII digits are not a number here
        ({"limit": "+5"}, "limit"),
        ({"limit": "5.0"}, "limit"),
        ({"limit": "99999999999999999999999"}, "limit"),
        ({"status": "done"}, "status"),
        ({"after": ""}, "after"),
    ],
)
def test_query_conversion(query: dict[str, str], expected: Any) -> None:
    if isinstance(expected, tuple):
        parsed = schemas.convert_query(query, schemas.VideoListQuery)
        assert (parsed.limit, schemas.given(parsed.status)) == expected
        return
    with pytest.raises(InvalidRequest) as caught:
        schemas.convert_query(query, schemas.VideoListQuery)
    assert caught.value.param == expected
