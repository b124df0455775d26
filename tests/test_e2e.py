"""The whole loop over real loopback sockets: receiver + simulated provider."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from typing import Any

import httpx
import pytest

from receiver.rules.signatures import parse_key
from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory, sign_headers, wait_until

pytestmark = pytest.mark.anyio

FAST = {"duration_median": 0.3, "duration_sigma": 0.1}


def callback_path(stack: Any, video_id: str) -> str:
    """The per-task callback URL the simulator received (tests play the provider with it)."""
    url = stack.simulator.tasks[video_id].callback_url
    assert url.startswith(stack.url + "/webhooks/")
    return str(url)


def rows(stack: Any, table: str) -> int:
    with sqlite3.connect(stack.settings.database_url[len("sqlite:///") :]) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_submit_completes_by_webhook(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        response = await stack.submit(
            {
                "model": "seedance-2.0",
                "prompt": "a red fox",
                "duration": 5,
                "return_last_frame": True,
                "metadata": {"k": "v"},
            }
        )
        assert response.status_code == 200, response.text
        video = response.json()
        assert video["object"] == "video" and video["id"].startswith("video_")
        assert video["status"] in ("queued", "in_progress")
        assert "webhooks" not in response.text  # the minted callback URL is a credential
        done = await stack.wait_status(video["id"], "completed")
        assert done["receiver"]["resolved_by"] == "webhook"
        assert done["receiver"]["deliveries"] == 1 and done["receiver"]["polls"] == 0
        assert done["content"]["last_frame_url"].endswith(".png")
        # The provider received our per-task URL, never the client's own.
        sent = stack.simulator.tasks[video["id"]].body
        assert sent["callback_url"].startswith(stack.url + "/webhooks/")
        assert sent["metadata"] == {"k": "v"}


@pytest.mark.parametrize("payload", ["thin", "bare"])
async def test_thin_and_bare_payloads(make_stack: StackFactory, payload: str) -> None:
    async with make_stack(SimConfig(secret=SECRET, payload=payload, **FAST)) as stack:
        video = (await stack.submit()).json()
        done = await stack.wait_status(video["id"], "completed")
        assert done["receiver"]["resolved_by"] == "webhook"
        if payload == "thin":
            # Settled by our confirming GET of the thin delivery.
            assert done["receiver"]["polls"] >= 1
            assert done["content"]["video_url"]


async def test_delivery_before_the_submit_answer_is_kept_and_applied(make_stack: StackFactory) -> None:
    sim = SimConfig(secret=SECRET, duration_median=0.05, duration_sigma=0.0, answer_delay=1.0)
    async with make_stack(sim) as stack:
        response = await stack.submit()
        assert response.status_code == 200
        video = response.json()
        # The delivery landed while our submit was still waiting for the provider's answer.
        assert video["status"] == "completed"
        assert video["receiver"]["resolved_by"] == "webhook"
        assert video["prompt"] == "a red fox"


async def test_fifty_concurrent_copies_of_one_delivery(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        video = (await stack.submit()).json()
        url = callback_path(stack, video["id"])
        body = json.dumps({"id": video["id"], "object": "video", "status": "completed"}).encode()
        headers = sign_headers(body, msg_id="msg_same")
        answers = await asyncio.gather(
            *(stack.client.post(url, content=body, headers=headers) for _ in range(50))
        )
        assert [a.status_code for a in answers] == [200] * 50
        assert sum(1 for a in answers if not a.json()["duplicate"]) == 1
        assert len({a.json()["id"] for a in answers}) == 1
        done = await stack.video(video["id"])
        assert done["status"] == "completed"
        assert (done["receiver"]["deliveries"], done["receiver"]["duplicates"]) == (50, 49)
        deliveries = (
            await stack.client.get(f"{stack.url}/v1/deliveries", params={"video_id": video["id"]})
        ).json()["data"]
        assert len(deliveries) == 1 and deliveries[0]["repeats"] == 49
        assert deliveries[0]["outcome"] == "applied"


async def test_forward_only_and_anomalies(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        video = (await stack.submit()).json()
        url = callback_path(stack, video["id"])

        async def deliver(msg_id: str, status: str) -> httpx.Response:
            body = json.dumps({"id": video["id"], "status": status}).encode()
            return await stack.client.post(url, content=body, headers=sign_headers(body, msg_id=msg_id))

        assert (await deliver("m1", "completed")).status_code == 200
        assert (await deliver("m2", "in_progress")).status_code == 200
        assert (await stack.video(video["id"]))["status"] == "completed"
        assert (await deliver("m3", "failed")).status_code == 200
        assert (await deliver("m4", "completed")).status_code == 200
        done = await stack.video(video["id"])
        assert done["status"] == "completed" and done["receiver"]["anomalies"] == 1
        outcomes = [
            d["outcome"]
            for d in (
                await stack.client.get(f"{stack.url}/v1/deliveries", params={"video_id": video["id"]})
            ).json()["data"]
        ]
        assert outcomes == ["duplicate", "anomaly", "stale", "applied"]  # newest first


async def test_unsigned_mode_confirms_by_get(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret="", **FAST), allow_unsigned=True, webhook_keys=()) as stack:
        video = (await stack.submit()).json()
        done = await stack.wait_status(video["id"], "completed")
        assert done["receiver"]["resolved_by"] == "webhook" and done["receiver"]["polls"] >= 1
        deliveries = (await stack.client.get(f"{stack.url}/v1/deliveries")).json()["data"]
        assert deliveries[0]["verified_by"] == "unsigned"


async def test_unsigned_lie_is_not_recorded(make_stack: StackFactory) -> None:
    async with make_stack(
        SimConfig(secret="", duration_median=3600), allow_unsigned=True, webhook_keys=()
    ) as stack:
        video = (await stack.submit()).json()
        url = callback_path(stack, video["id"])
        body = json.dumps({"id": video["id"], "status": "completed"}).encode()
        assert (await stack.client.post(url, content=body)).status_code == 200
        await stack.poller.run_until_idle()
        after = await stack.video(video["id"])
        assert after["status"] != "completed"  # the provider's own answer says otherwise
        # The workspace URL never takes unsigned deliveries.
        answer = await stack.client.post(f"{stack.url}/webhooks", content=body)
        assert answer.status_code == 401


async def test_workspace_delivery_for_unknown_video_is_kept_then_applied(make_stack: StackFactory) -> None:
    sim = SimConfig(secret=SECRET, duration_median=3600, answer_delay=0.5)
    async with make_stack(sim) as stack:
        submitting = asyncio.create_task(stack.submit())
        await wait_until(lambda: bool(stack.simulator.tasks), what="the provider to create the task")
        video_id = next(iter(stack.simulator.tasks))
        body = json.dumps({"id": video_id, "status": "completed"}).encode()
        early = await stack.client.post(
            f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id="ws1")
        )
        assert early.status_code == 200
        response = await submitting
        assert response.status_code == 200
        done = await stack.video(video_id)
        assert done["status"] == "completed" and done["receiver"]["resolved_by"] == "webhook"


async def test_workspace_unknown_video_stays_unmatched(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        body = json.dumps({"id": "video_nobody", "status": "completed"}).encode()
        answer = await stack.client.post(
            f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id="ws2")
        )
        assert answer.status_code == 200
        listed = (await stack.client.get(f"{stack.url}/v1/deliveries")).json()["data"]
        assert listed[0]["outcome"] == "unmatched" and listed[0]["video_id"] == "video_nobody"


OTHER_SECRET = "whsec_" + base64.b64encode(b"a second provider's signing key").decode()


async def test_the_same_webhook_id_on_two_tasks_is_two_deliveries(
    make_stack: StackFactory, database_url: str
) -> None:
    """Task X got webhook-id M; task Y's own failed delivery on Y's own URL under the same M was
    answered 'duplicate' and Y stayed queued. Both are applied now, each on its own task; on
    POST /webhooks the same id under two providers' secrets is two deliveries as well."""
    keys = (parse_key(SECRET), parse_key(OTHER_SECRET))
    sim = SimConfig(secret=SECRET, duration_median=3600)
    async with make_stack(sim, database_url=database_url, webhook_keys=keys) as stack:
        x, y, z, w = [(await stack.submit()).json()["id"] for _ in range(4)]

        async def deliver(url: str, video_id: str, status: str, secret: str = SECRET) -> dict[str, Any]:
            body = json.dumps({"id": video_id, "status": status}).encode()
            headers = sign_headers(body, msg_id="M", secret=secret)
            answer = await stack.client.post(url, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()
            return result

        first = await deliver(callback_path(stack, x), x, "completed")
        second = await deliver(callback_path(stack, y), y, "failed")
        assert not first["duplicate"] and not second["duplicate"] and second["id"] != first["id"]
        done = await stack.video(y)  # at once: no poll was needed to learn it
        assert done["status"] == "failed" and done["receiver"]["resolved_by"] == "webhook"
        assert (await stack.video(x))["status"] == "completed"
        again = await deliver(callback_path(stack, y), y, "failed")
        assert again["duplicate"] and again["id"] == second["id"]

        workspace = f"{stack.url}/webhooks"
        one = await deliver(workspace, z, "completed")
        other = await deliver(workspace, w, "failed", secret=OTHER_SECRET)
        assert not one["duplicate"] and not other["duplicate"]
        assert (await stack.video(z))["status"] == "completed"
        assert (await stack.video(w))["status"] == "failed"
        same_secret = await deliver(workspace, z, "completed")
        assert same_secret["duplicate"] and same_secret["id"] == one["id"]


async def test_idempotency_key(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        body = {"model": "m", "prompt": "p"}
        first = await stack.submit(body, headers={"Idempotency-Key": "k1"})
        again = await stack.submit(body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 200
        assert first.json()["id"] == again.json()["id"]
        assert len(stack.simulator.tasks) == 1  # paid once
        other = await stack.submit({"model": "m", "prompt": "other"}, headers={"Idempotency-Key": "k1"})
        assert other.status_code == 400 and other.json()["error"]["param"] == "Idempotency-Key"


async def test_idempotent_retry_while_first_runs_is_409(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600, answer_delay=1.0)) as stack:
        first = asyncio.create_task(stack.submit(headers={"Idempotency-Key": "k2"}))
        await wait_until(lambda: bool(stack.simulator.tasks), what="the first submit to reach the provider")
        second = await stack.submit(headers={"Idempotency-Key": "k2"})
        assert second.status_code == 409
        assert (await first).status_code == 200
        assert len(stack.simulator.tasks) == 1


# A 5xx leaves the outcome unknown: that task is kept (tests/test_submit_unconfirmed.py).
@pytest.mark.parametrize(("provider_status", "expected"), [(400, 400), (401, 502), (422, 400), (429, 429)])
async def test_provider_errors_leave_no_task(
    make_stack: StackFactory, provider_status: int, expected: int
) -> None:
    async with make_stack() as stack:

        async def failing(request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                provider_status, json={"error": {"message": "nope"}}, headers={"retry-after": "7"}
            )

        stack.app.state.ctx.provider.http = httpx.AsyncClient(transport=httpx.MockTransport(failing))
        response = await stack.submit()
        assert response.status_code == expected
        assert set(response.json()["error"]) == {"type", "code", "message", "param"}
        assert rows(stack, "tasks") == 0


async def test_provider_unreachable_is_502(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        stack.app.state.ctx.provider.base_url = "http://127.0.0.1:9"
        response = await stack.submit()
        assert response.status_code == 502
        assert rows(stack, "tasks") == 0


async def test_api_keys(make_stack: StackFactory) -> None:
    async with make_stack(api_keys=("key-one", "key-two")) as stack:
        assert (await stack.submit()).status_code == 401
        assert (await stack.submit(headers={"authorization": "Bearer nope"})).status_code == 401
        ok = await stack.submit(headers={"authorization": "Bearer key-two"})
        assert ok.status_code == 200
        assert (await stack.client.get(f"{stack.url}/v1/videos")).status_code == 401
        assert (await stack.client.get(f"{stack.url}/healthz")).status_code == 200
        assert (await stack.client.get(f"{stack.url}/readyz")).status_code == 200


async def test_list_pagination(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        ids = [(await stack.submit()).json()["id"] for _ in range(5)]
        page = (await stack.client.get(f"{stack.url}/v1/videos", params={"limit": 2})).json()
        assert [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
        rest = (
            await stack.client.get(
                f"{stack.url}/v1/videos", params={"limit": 10, "after": page["data"][-1]["id"]}
            )
        ).json()
        assert [v["id"] for v in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
        filtered = (await stack.client.get(f"{stack.url}/v1/videos", params={"status": "completed"})).json()
        assert filtered["data"] == []


async def test_replaying_a_delivery_changes_nothing(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        video = (await stack.submit()).json()
        before = await stack.wait_status(video["id"], "completed")
        delivery = (await stack.client.get(f"{stack.url}/v1/deliveries")).json()["data"][0]
        for _ in range(2):
            replay = await stack.client.post(f"{stack.url}/v1/deliveries/{delivery['id']}/replay")
            assert replay.status_code == 200 and replay.json()["replay_outcome"] == "duplicate"
        after = await stack.video(video["id"])
        assert after == before


async def test_body_cap(make_stack: StackFactory) -> None:
    async with make_stack(max_body_bytes=2048) as stack:
        big = b"{" + b" " * 4096 + b"}"
        url = f"{stack.url}/webhooks"
        assert (await stack.client.post(url, content=big, headers=sign_headers(big))).status_code == 413

        async def chunks() -> Any:
            for _ in range(8):
                yield b" " * 1024

        # No Content-Length at all (chunked): still capped.
        answer = await stack.client.post(url, content=chunks(), headers=sign_headers(b""))
        assert answer.status_code == 413
        assert rows(stack, "deliveries") == 0


async def test_content_length_that_lies_is_capped(make_stack: StackFactory) -> None:
    async with make_stack(max_body_bytes=2048) as stack:
        port = int(stack.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"x" * 8192
        writer.write(
            b"POST /webhooks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=10)
        writer.close()
        assert b" 413 " in status_line
        assert rows(stack, "deliveries") == 0


def _signed(body: bytes, **kw: Any) -> dict[str, str]:
    return sign_headers(body, **kw)


BAD_WEBHOOKS = [
    # (path suffix, body, headers builder, expected status)
    ("", b'{"id":"v","status":"completed"}', lambda b: {}, 401),
    ("", b'{"id":"v","status":"completed"}', lambda b: _signed(b + b" "), 401),
    ("", b'{"id":"v","status":"completed"}', lambda b: _signed(b, timestamp=int(time.time()) - 400), 401),
    ("", b'{"id":"v","status":"completed"}', lambda b: _signed(b, timestamp=int(time.time()) + 400), 401),
    ("", b'{"id":"v","status":"completed"}', lambda b: {**_signed(b), "webhook-timestamp": "soon"}, 401),
    ("", b'{"id":"v","status":"completed"}', lambda b: {**_signed(b), "webhook-signature": "v1a,@@@"}, 401),
    ("", b'{"id":"v","status":"completed"}', lambda b: {"x-openrouter-signature": "t=1,v1=zz"}, 401),
    ("", b"not json", lambda b: _signed(b), 400),
    ("", b"\xff\xfe", lambda b: _signed(b), 400),
    ("", b"[1,2]", lambda b: _signed(b), 400),
    ("", b'{"id":"v"}', lambda b: _signed(b), 400),
    ("", b'{"id":"v","status":["sideways"]}', lambda b: _signed(b), 400),
    ("", b'{"id":5,"status":"completed"}', lambda b: _signed(b), 400),
    ("", b'{"type":"video.completed","data":"v"}', lambda b: _signed(b), 400),
    (
        "",
        b'{"object":"event","type":"video.completed","data":{"id":"v","status":"failed"}}',
        lambda b: _signed(b),
        400,
    ),
    ("/" + "A" * 43, b'{"id":"v","status":"completed"}', lambda b: _signed(b), 404),
    ("/short", b'{"id":"v","status":"completed"}', lambda b: _signed(b), 404),
]


@pytest.mark.parametrize(("suffix", "body", "headers", "expected"), BAD_WEBHOOKS)
async def test_bad_webhooks_get_4xx_and_store_nothing(
    make_stack: StackFactory, suffix: str, body: bytes, headers: Any, expected: int
) -> None:
    async with make_stack() as stack:
        answer = await stack.client.post(f"{stack.url}/webhooks{suffix}", content=body, headers=headers(body))
        assert answer.status_code == expected, answer.text
        assert set(answer.json()["error"]) == {"type", "code", "message", "param"}
        assert rows(stack, "deliveries") == 0


async def test_per_task_url_rejects_another_video(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        video = (await stack.submit()).json()
        url = callback_path(stack, video["id"])
        body = b'{"id":"video_someone_else","status":"completed"}'
        answer = await stack.client.post(url, content=body, headers=sign_headers(body))
        assert answer.status_code == 400
        assert rows(stack, "deliveries") == 0
        assert (await stack.video(video["id"]))["status"] != "completed"


async def test_ignored_event_type_is_kept_and_changes_nothing(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        video = (await stack.submit()).json()
        url = callback_path(stack, video["id"])
        body = json.dumps(
            {
                "id": "evt_p",
                "object": "event",
                "type": "video.progress",
                "data": {"id": video["id"], "progress": 50},
            }
        ).encode()
        assert (await stack.client.post(url, content=body, headers=sign_headers(body))).status_code == 200
        listed = (await stack.client.get(f"{stack.url}/v1/deliveries")).json()["data"]
        assert listed[0]["outcome"] == "ignored"
        assert (await stack.video(video["id"]))["status"] == video["status"]


BAD_SUBMITS: list[tuple[Any, str | None]] = [
    (b"not json", None),
    (b"[]", None),
    (b"", None),
    ({"prompt": "p"}, "model"),
    ({"model": "m"}, "prompt"),
    ({"model": 5, "prompt": "p"}, "model"),
    ({"model": "m", "prompt": ""}, "prompt"),
    ({"model": "m", "prompt": "p", "duration": "5"}, "duration"),
    ({"model": "m", "prompt": "p", "duration": 5.5}, "duration"),
    ({"model": "m", "prompt": "p", "duration": True}, "duration"),
    ({"model": "m", "prompt": "p", "resolution": "8K"}, "resolution"),
    ({"model": "m", "prompt": "p", "aspect_ratio": "2:1"}, "aspect_ratio"),
    ({"model": "m", "prompt": "p", "generate_audio": "yes"}, "generate_audio"),
    ({"model": "m", "prompt": "p", "watermark": 1}, "watermark"),
    ({"model": "m", "prompt": "p", "seed": "7"}, "seed"),
    ({"model": "m", "prompt": "p", "execution_expires_after": 0}, "execution_expires_after"),
    ({"model": "m", "prompt": "p", "metadata": []}, "metadata"),
    ({"model": "m", "prompt": "p", "frame_images": {}}, "frame_images"),
    ({"model": "m", "prompt": "p", "callback_url": "ftp://x"}, "callback_url"),
    ({"model": "m", "prompt": "p", "callback_url": "http://example.com/hook"}, "callback_url"),
    ({"model": "m", "prompt": "p", "callback_url": "https://10.1.2.3/hook"}, "callback_url"),
    ({"model": "m", "prompt": "p", "callback_url": "https://example.com/hook"}, "callback_url"),
    ({"model": "m", "prompt": "p", "size": "720x1280"}, "size"),
]


@pytest.mark.parametrize(("body", "param"), BAD_SUBMITS)
async def test_bad_submits_get_400_and_store_nothing(
    make_stack: StackFactory, body: Any, param: str | None
) -> None:
    async with make_stack() as stack:
        kwargs: dict[str, Any] = (
            {"content": body, "headers": {"content-type": "application/json"}}
            if isinstance(body, bytes)
            else {"json": body}
        )
        answer = await stack.client.post(f"{stack.url}/v1/videos", **kwargs)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param
        assert rows(stack, "tasks") == 0 and not stack.simulator.tasks


async def test_callback_url_needs_the_callback_secret_then_is_kept(make_stack: StackFactory) -> None:
    async with make_stack(callback_secret="whsec_" + "A" * 32) as stack:
        answer = await stack.submit({"model": "m", "prompt": "p", "callback_url": "http://127.0.0.1:9/mine"})
        assert answer.status_code == 200
        sent = stack.simulator.tasks[answer.json()["id"]].body
        assert sent["callback_url"] != "http://127.0.0.1:9/mine"


@pytest.mark.parametrize(
    ("method", "path", "params", "expected"),
    [
        ("GET", "/v1/videos/video_missing", None, 404),
        ("GET", "/v1/videos", {"limit": "0"}, 400),
        ("GET", "/v1/videos", {"limit": "101"}, 400),
        ("GET", "/v1/videos", {"limit": "ten"}, 400),
        ("GET", "/v1/videos", {"after": "video_missing"}, 400),
        ("GET", "/v1/videos", {"status": "done"}, 400),
        ("GET", "/v1/deliveries", {"after": "dlv_missing"}, 400),
        ("GET", "/v1/deliveries", {"limit": "-1"}, 400),
        ("POST", "/v1/deliveries/dlv_999/replay", None, 404),
        ("POST", "/v1/deliveries/dlv_missing/replay", None, 400),
        ("DELETE", "/v1/videos", None, 405),
        ("GET", "/nowhere", None, 404),
        ("GET", "/webhooks", None, 405),
    ],
)
async def test_bad_reads_get_4xx(
    make_stack: StackFactory, method: str, path: str, params: dict[str, str] | None, expected: int
) -> None:
    async with make_stack() as stack:
        answer = await stack.client.request(method, f"{stack.url}{path}", params=params)
        assert answer.status_code == expected
        assert set(answer.json()["error"]) == {"type", "code", "message", "param"}
        assert rows(stack, "tasks") == 0 and rows(stack, "deliveries") == 0


async def test_concurrent_submits_each_read_their_own_write(make_stack: StackFactory) -> None:
    async with make_stack(SimConfig(secret=SECRET, duration_median=3600)) as stack:
        answers = await asyncio.gather(*(stack.submit({"model": "m", "prompt": str(i)}) for i in range(200)))
        videos = [a.json() for a in answers]
        assert [(a.status_code, a.text) for a in answers if a.status_code != 200] == []
        assert all(v["id"] and v["status"] == "queued" for v in videos), [v for v in videos if not v["id"]][
            :2
        ]
        assert len({v["id"] for v in videos}) == 200
