"""Cross-site requests: content types, Origin / Sec-Fetch-Site, the Host allow list, CORS.

Each refusal is checked over real sockets for its answer, for nothing written (no task, no
subscription, no replay, no call to the provider) and for the service still taking a real
delivery. The last test runs an attacker page on another loopback origin in Chromium.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, StackFactory, Subscriber, serve, sign_headers, wait_until

pytestmark = pytest.mark.anyio

FOX = {"model": "seedance-2.0", "prompt": "a red fox"}


async def nothing_written(stack: Stack) -> None:
    """No task, no subscription, no event replay, and the provider never asked."""
    videos = await stack.client.get(f"{stack.url}/v1/videos")
    assert videos.status_code == 200 and videos.json()["data"] == [], videos.text
    subs = await stack.client.get(f"{stack.url}/v1/subscriptions")
    assert subs.status_code == 200 and subs.json()["data"] == [], subs.text
    assert stack.simulator.tasks == {}


async def still_takes_deliveries(stack: Stack) -> None:
    """A real task still completes through its signed delivery."""
    answer = await stack.submit()
    assert answer.status_code == 200, answer.text
    await stack.wait_status(answer.json()["id"], "completed")


def assert_error(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == code and error["message"], error


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/v1/videos", "text/plain", json.dumps(FOX)),
        ("/v1/videos", "application/x-www-form-urlencoded", "model=seedance-2.0&prompt=fox"),
        ("/v1/videos", None, json.dumps(FOX)),
        ("/v1/subscriptions", "text/plain", '{"url":"http://127.0.0.1:9/hook"}'),
        ("/v1/subscriptions", "multipart/form-data; boundary=x", "--x--"),
        ("/v1/events/replay", "text/plain;charset=UTF-8", "{}"),
    ],
)
async def test_a_write_in_another_content_type_is_415(
    make_stack: StackFactory, path: str, content_type: str | None, body: str
) -> None:
    async with make_stack() as stack:
        headers = {"content-type": content_type} if content_type else {}
        # httpx adds no content type of its own to raw bytes.
        answer = await stack.client.post(f"{stack.url}{path}", content=body.encode(), headers=headers)
        assert_error(answer, 415, "unsupported_media_type")
        await nothing_written(stack)
        await still_takes_deliveries(stack)


async def test_json_with_parameters_and_writes_with_no_body_need_no_more(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        answer = await stack.client.post(
            f"{stack.url}/v1/subscriptions",
            content=json.dumps({"url": "http://127.0.0.1:9/hook"}).encode(),
            headers={"content-type": "Application/JSON; charset=utf-8"},
        )
        assert answer.status_code == 200, answer.text
        sub = answer.json()["id"]
        # Pause, resume and delete carry no body, so no content type.
        for action in ("pause", "resume"):
            done = await stack.client.post(f"{stack.url}/v1/subscriptions/{sub}/{action}")
            assert done.status_code == 200, done.text
        assert (await stack.client.delete(f"{stack.url}/v1/subscriptions/{sub}")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:1"},  # same host, another port: another origin
        {"sec-fetch-site": "cross-site"},
        {"origin": "http://evil.example", "sec-fetch-site": "cross-site"},
    ],
)
async def test_a_write_from_another_origin_is_403(make_stack: StackFactory, headers: dict[str, str]) -> None:
    async with make_stack() as stack:
        for path, body in (
            ("/v1/videos", FOX),
            ("/v1/subscriptions", {"url": "http://127.0.0.1:9/hook"}),
            ("/v1/events/replay", {}),
        ):
            answer = await stack.client.post(f"{stack.url}{path}", json=body, headers=headers)
            assert_error(answer, 403, "cross_origin")
        await nothing_written(stack)
        await still_takes_deliveries(stack)


async def test_a_write_from_its_own_origin_and_a_read_from_any_origin_are_served(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as stack:
        port = stack.url.rsplit(":", 1)[1]
        for origin in (stack.url, f"http://localhost:{port}"):
            host = origin.split("://", 1)[1]
            answer = await stack.client.post(
                f"{stack.url}/v1/subscriptions",
                json={"url": "http://127.0.0.1:9/hook"},
                headers={"origin": origin, "host": host, "sec-fetch-site": "same-origin"},
            )
            assert answer.status_code == 200, (origin, answer.text)
        # A GET from elsewhere is answered, without CORS headers: the page cannot read it.
        read = await stack.client.get(f"{stack.url}/v1/videos", headers={"origin": "http://evil.example"})
        assert read.status_code == 200
        assert "access-control-allow-origin" not in read.headers


@pytest.mark.parametrize("path", ["/v1/videos", "/", "/openapi.json", "/static/app.js"])
async def test_an_unknown_host_is_421_on_the_api_and_the_dashboard(
    make_stack: StackFactory, path: str
) -> None:
    async with make_stack() as stack:
        answer = await stack.client.get(f"{stack.url}{path}", headers={"host": "rebound.example"})
        assert_error(answer, 421, "misdirected")
        posted = await stack.client.post(
            f"{stack.url}/v1/videos", json=FOX, headers={"host": "rebound.example:8000"}
        )
        assert_error(posted, 421, "misdirected")
        await nothing_written(stack)


async def test_probes_and_deliveries_take_any_host(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        for path in ("/healthz", "/readyz", "/metrics"):
            answer = await stack.client.get(f"{stack.url}{path}", headers={"host": "10.1.2.3:8000"})
            assert answer.status_code == 200, (path, answer.text)
        submitted = await stack.submit()
        video_id = submitted.json()["id"]
        task = stack.simulator.tasks[video_id]
        assert task.callback_url is not None
        body = json.dumps(stack.simulator.video(task, "completed")).encode()
        headers = {**sign_headers(body, msg_id="msg_host"), "host": "balancer.internal"}
        delivered = await stack.client.post(task.callback_url, content=body, headers=headers)
        assert delivered.status_code == 200, delivered.text


async def test_allowed_hosts_and_the_public_url_host_are_answered(make_stack: StackFactory) -> None:
    async with make_stack(
        allowed_hosts=("receiver.internal",), public_url="https://hooks.example.com"
    ) as stack:
        for host in (
            "receiver.internal",
            "hooks.example.com",
            "HOOKS.example.com.",
            "localhost:1234",
            "[::1]:80",
        ):
            answer = await stack.client.get(f"{stack.url}/v1/videos", headers={"host": host})
            assert answer.status_code == 200, (host, answer.text)
        # The public URL's origin is its own, whatever Host a proxy in front forwarded.
        answer = await stack.client.post(
            f"{stack.url}/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/hook"},
            headers={"origin": "https://hooks.example.com", "host": "receiver.internal"},
        )
        assert answer.status_code == 200, answer.text
    async with make_stack(allowed_hosts=("*",)) as stack:
        answer = await stack.client.get(f"{stack.url}/v1/videos", headers={"host": "anything.example"})
        assert answer.status_code == 200


async def test_cors_origins_get_proper_cors_answers(make_stack: StackFactory) -> None:
    app_origin = "https://app.example.com"
    async with make_stack(cors_origins=(app_origin,)) as stack:
        preflight = await stack.client.options(
            f"{stack.url}/v1/subscriptions",
            headers={
                "origin": app_origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, authorization",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == app_origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        created = await stack.client.post(
            f"{stack.url}/v1/subscriptions",
            json={"url": "http://127.0.0.1:9/hook"},
            headers={"origin": app_origin, "sec-fetch-site": "cross-site"},
        )
        assert created.status_code == 200, created.text
        assert created.headers["access-control-allow-origin"] == app_origin
        # Any other origin is still refused, preflight included, and nothing is written.
        other = await stack.client.options(
            f"{stack.url}/v1/subscriptions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert_error(other, 403, "cross_origin")
        refused = await stack.client.post(
            f"{stack.url}/v1/videos", json=FOX, headers={"origin": "https://evil.example"}
        )
        assert_error(refused, 403, "cross_origin")
        assert stack.simulator.tasks == {}


ATTACK_PAGE = """<!doctype html><title>cute cats</title><script>
const target = %(target)s, hook = %(hook)s;
const json = (o) => JSON.stringify(o);
async function attack() {
  const tries = [
    // Simple requests: no preflight, the body is JSON in a text/plain or form wrapper.
    fetch(target + "/v1/subscriptions", {method: "POST", mode: "no-cors",
      headers: {"content-type": "text/plain"}, body: json({url: hook})}),
    fetch(target + "/v1/events/replay", {method: "POST", mode: "no-cors",
      headers: {"content-type": "text/plain"}, body: "{}"}),
    fetch(target + "/v1/videos", {method: "POST", mode: "no-cors",
      headers: {"content-type": "text/plain"}, body: json({model: "seedance-2.0", prompt: "paid"})}),
    fetch(target + "/v1/videos", {method: "POST", mode: "no-cors",
      body: new URLSearchParams({model: "seedance-2.0", prompt: "paid"})}),
    fetch(target + "/v1/videos", {method: "POST", mode: "no-cors",
      body: (() => { const f = new FormData(); f.append("model", "seedance-2.0");
                     f.append("prompt", "paid"); return f; })()}),
    // A JSON request needs a preflight, which the receiver does not grant.
    fetch(target + "/v1/subscriptions", {method: "POST",
      headers: {"content-type": "application/json"}, body: json({url: hook})}),
  ];
  const results = await Promise.allSettled(tries);
  document.title = "done " + results.map((r) => r.status).join(",");
}
attack();
</script>"""


async def test_a_page_on_another_origin_cannot_subscribe_replay_or_submit(make_stack: StackFactory) -> None:
    """The attack as it was seen: a page on another origin, opened in Chromium, in the default
    no-key mode, tries to subscribe itself, replay history to itself and submit a paid task."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from tests.helpers import browser_page

    spy = Subscriber()
    async with make_stack() as stack, serve(spy.app) as spy_url:
        # History worth stealing: one completed task with its event.
        first = (await stack.submit()).json()["id"]
        await stack.wait_status(first, "completed")
        target = stack.url.replace("127.0.0.1", "localhost")  # the page's target is another site

        async def page(request: Any) -> HTMLResponse:
            text = ATTACK_PAGE % {"target": json.dumps(target), "hook": json.dumps(f"{spy_url}/hook")}
            return HTMLResponse(text)

        attacker = Starlette(routes=[Route("/", page)])
        errors: list[str] = []
        async with serve(attacker) as attacker_url, browser_page(errors, lambda text: True) as tab:
            await tab.goto(attacker_url + "/")
            await tab.wait_for_function("document.title.startsWith('done')")

        subs = (await stack.client.get(f"{stack.url}/v1/subscriptions")).json()["data"]
        assert subs == []
        videos = (await stack.client.get(f"{stack.url}/v1/videos")).json()["data"]
        assert [v["id"] for v in videos] == [first]
        assert list(stack.simulator.tasks) == [first]
        assert spy.received == []
        await still_takes_deliveries(stack)

        # The same page's requests, had they come from the receiver's own origin, would work:
        # the refusals above are the origin rule's, not a broken request.
        async def own_origin_works() -> bool:
            answer = await stack.client.post(
                f"{stack.url}/v1/subscriptions",
                json={"url": f"{spy_url}/hook"},
                headers={"origin": stack.url},
            )
            return answer.status_code == 200

        await wait_until(own_origin_works, timeout=5)


async def test_a_trailing_slash_is_404_never_a_redirect_to_the_requests_host(
    make_stack: StackFactory,
) -> None:
    async with make_stack() as stack:
        for path in ("/v1/videos/", "/v1/subscriptions/", "/healthz/"):
            answer = await stack.client.get(f"{stack.url}{path}", headers={"host": "localhost"})
            assert_error(answer, 404, "not_found")
            assert "location" not in answer.headers
