"""The read routes the dashboard needs: one delivery, task stats, subscriber health; and `/`."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory, Subscriber, serve, wait_until

pytestmark = pytest.mark.anyio

FAST = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.1)
SLOW = SimConfig(secret=SECRET, duration_median=3600)


async def test_get_one_delivery(make_stack: StackFactory) -> None:
    async with make_stack(FAST) as stack:
        video = (await stack.submit()).json()
        await stack.wait_status(video["id"], "completed")
        query = {"video_id": video["id"]}
        listed = (await stack.client.get(f"{stack.url}/v1/deliveries", params=query)).json()
        one = await stack.client.get(f"{stack.url}/v1/deliveries/{listed['data'][0]['id']}")
        assert one.status_code == 200
        assert one.json() == listed["data"][0]
        missing = await stack.client.get(f"{stack.url}/v1/deliveries/dlv_999")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        for malformed in ("dlv_x", "nothing", "dlv_%C2%B2"):
            answer = await stack.client.get(f"{stack.url}/v1/deliveries/{malformed}")
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "id"


async def test_stats_count_tasks_by_state_and_the_oldest_open(make_stack: StackFactory) -> None:
    async with make_stack(FAST) as stack:
        empty = (await stack.client.get(f"{stack.url}/v1/stats")).json()
        assert empty["object"] == "stats"
        assert empty["tasks"]["total"] == 0 and empty["tasks"]["oldest_open_created_at"] is None
        assert empty["tasks"]["oldest_open_age_seconds"] is None
        done = [(await stack.submit()).json()["id"] for _ in range(2)]
        for video_id in done:
            await stack.wait_status(video_id, "completed")
        stack.simulator.config = SLOW  # the next task stays open
        open_task = (await stack.submit()).json()
        stats = (await stack.client.get(f"{stack.url}/v1/stats")).json()
        tasks = stats["tasks"]
        assert tasks["total"] == 3 and tasks["open"] == 1
        assert tasks["by_status"]["completed"] == 2
        assert tasks["by_status"][open_task["status"]] == 1
        assert tasks["by_resolved_by"] == {"webhook": 2}
        assert {"status": "completed", "resolved_by": "webhook", "count": 2} in tasks["by_state"]
        assert tasks["oldest_open_created_at"] == open_task["receiver"]["submitted_at"]
        assert 0 <= tasks["oldest_open_age_seconds"] < 60
        assert stats["sends"] == {"by_status": {}}


async def test_subscriber_health(make_stack: StackFactory) -> None:
    healthy = Subscriber()
    broken = Subscriber(answer=lambda n: 500)
    fanout = {"fanout_retry_schedule": (0.2,), "fanout_timeout": 2}
    async with (
        serve(healthy.app) as healthy_url,
        serve(broken.app) as broken_url,
        make_stack(FAST, **fanout) as stack,
    ):
        subs: dict[str, Any] = {}
        for name, url in (("healthy", healthy_url), ("broken", broken_url)):
            answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": f"{url}/hook"})
            subs[name] = answer.json()["id"]
        empty = (await stack.client.get(f"{stack.url}/v1/health/subscribers")).json()
        assert [h["success_rate"] for h in empty["data"]] == [None, None]
        for _ in range(3):
            video = (await stack.submit()).json()
            await stack.wait_status(video["id"], "completed")

        async def health() -> dict[str, dict[str, Any]]:
            page = (await stack.client.get(f"{stack.url}/v1/health/subscribers")).json()
            assert page["object"] == "list" and page["has_more"] is False
            return {h["subscription_id"]: h for h in page["data"]}

        async def settled() -> bool:
            now = await health()
            return now[subs["healthy"]]["delivered"] == 3 and now[subs["broken"]]["dead_letters"] == 3

        await wait_until(settled, timeout=15, what="every send to settle")
        now = await health()
        good, bad = now[subs["healthy"]], now[subs["broken"]]
        assert good["object"] == "subscriber_health" and good["status"] == "active"
        assert (good["success_rate"], good["in_flight"], good["dead_letters"]) == (1.0, 0, 0)
        assert good["last_error"] is None
        assert good["last_success_at"] is not None and good["window_events"] == 3
        assert (bad["success_rate"], bad["sends"], bad["dead"], bad["in_flight"]) == (0.0, 3, 3, 0)
        assert bad["dead_letters_more"] is False and bad["last_success_at"] is None
        assert bad["last_error"]["error"] == "answered 500" and bad["last_error"]["status"] == 500
        assert bad["last_error"]["event_id"].startswith("evt_") and bad["last_error"]["at"] > 0
        # Pages like the subscriptions list, newest first.
        first = (await stack.client.get(f"{stack.url}/v1/health/subscribers", params={"limit": 1})).json()
        assert [h["subscription_id"] for h in first["data"]] == [subs["broken"]] and first["has_more"]
        assert first["first_id"] == first["last_id"] == subs["broken"]  # the cursor `after` takes
        rest = (
            await stack.client.get(
                f"{stack.url}/v1/health/subscribers", params={"limit": 1, "after": subs["broken"]}
            )
        ).json()
        assert [h["subscription_id"] for h in rest["data"]] == [subs["healthy"]] and not rest["has_more"]
        for cursor in ("sub_0", "sub_é", "dlv_1"):
            query = {"after": cursor}
            answer = await stack.client.get(f"{stack.url}/v1/health/subscribers", params=query)
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "after"


async def test_dashboard_shell_needs_no_key_but_its_data_does(make_stack: StackFactory) -> None:
    async with make_stack(FAST, api_keys=("k1",)) as stack:
        page = await stack.client.get(f"{stack.url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<meta name="receiver-auth" content="required">' in page.text
        assert "k1" not in page.text
        for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
            answer = await stack.client.get(f"{stack.url}/static/{asset}")
            assert answer.status_code == 200 and kind in answer.headers["content-type"]
            assert answer.headers["content-security-policy"] == csp
            again = await stack.client.get(
                f"{stack.url}/static/{asset}", headers={"if-none-match": answer.headers["etag"]}
            )
            assert again.status_code == 304 and again.content == b""
        missing = await stack.client.get(f"{stack.url}/static/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"
        assert (await stack.client.get(f"{stack.url}/static/index.html")).status_code == 404
        for path in ("/v1/stats", "/v1/health/subscribers", "/v1/deliveries/dlv_1"):
            answer = await stack.client.get(f"{stack.url}{path}")
            assert answer.status_code == 401, path
            assert answer.json()["error"]["code"] == "missing_api_key"
        keyed = await stack.client.get(f"{stack.url}/v1/stats", headers={"authorization": "Bearer k1"})
        assert keyed.status_code == 200


async def test_dashboard_shell_open_when_no_keys(make_stack: StackFactory) -> None:
    async with make_stack(FAST) as stack:
        page = await stack.client.get(f"{stack.url}/")
        assert '<meta name="receiver-auth" content="open">' in page.text
        assert (await stack.client.head(f"{stack.url}/")).status_code == 200


def test_the_page_learns_which_optional_routes_exist() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from receiver.routes.dashboard import _features

    async def endpoint(request: Request) -> Response:
        return Response()

    def features(*paths: str) -> list[str]:
        app = Starlette(routes=[Route(path, endpoint) for path in paths])
        return _features(Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []}))

    assert features("/v1/videos/{video_id:str}") == []
    both = features("/v1/health/deliveries", "/v1/videos/{id}/content")
    assert both == ["health-deliveries", "video-content"]


async def test_in_flight_counts_only_attempts_being_made_and_retrying_the_rest(
    make_stack: StackFactory,
) -> None:
    """A subscriber that cannot be reached has nothing in flight, only sends retrying; one that
    holds its answer has its attempt in flight while it holds it."""
    hanging = Subscriber(hang=30)
    fanout = {"fanout_retry_schedule": (60, 60, 60), "fanout_timeout": 30}
    async with serve(hanging.app) as hanging_url, make_stack(FAST, **fanout) as stack:
        subs = {}
        for name, url in (("dead", "http://127.0.0.1:9/hook"), ("hanging", f"{hanging_url}/hook")):
            answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": url})
            subs[name] = answer.json()["id"]
        for _ in range(2):
            video = (await stack.submit()).json()
            await stack.wait_status(video["id"], "completed")

        async def health() -> dict[str, dict[str, Any]]:
            page = (await stack.client.get(f"{stack.url}/v1/health/subscribers")).json()
            return {h["subscription_id"]: h for h in page["data"]}

        async def both_seen() -> bool:
            now = await health()
            dead, held = now[subs["dead"]], now[subs["hanging"]]
            return dead["retrying"] == 2 and held["in_flight"] == 2

        await wait_until(both_seen, timeout=20, what="two retrying and two in flight")
        now = await health()
        dead, held = now[subs["dead"]], now[subs["hanging"]]
        assert (dead["pending"], dead["in_flight"], dead["retrying"]) == (2, 0, 2)
        assert dead["last_error"] is not None
        assert (held["pending"], held["in_flight"], held["retrying"]) == (2, 2, 0)
        hanging.release.set()
