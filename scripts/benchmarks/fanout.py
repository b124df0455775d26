"""scripts/bench fanout: events/s to a subscriber against a bare aiohttp session, and to each
broker against its own client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import free_port, machine, start_bare, start_receiver, wait_ready
from receiver.simulator.provider import dev_secret


async def seed_events(db: Path, count: int) -> None:
    """`count` terminal tasks and their events, written straight into a migrated store."""
    from store.sqlite import SQLiteStore

    store = SQLiteStore(str(db))
    await store.open()  # migrations
    await store.close()
    now = time.time()
    video = {
        "object": "video",
        "status": "completed",
        "model": "seedance-2.0",
        "prompt": "a red fox",
        "content": {"video_url": "https://cdn.example/v.mp4"},
    }
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO tasks (pk, video_id, token_hash, status, model, video, request, created_at,"
            " updated_at, terminal_at, resolved_by) VALUES (?, ?, ?, 'completed', 'seedance-2.0', '{}', '{}',"
            " ?, ?, ?, 'webhook')",
            [(i, f"video_{i:08d}", f"t{i}", now, now, now) for i in range(1, count + 1)],
        )
        conn.executemany(
            "INSERT INTO events (id, task_pk, video_id, type, created_at, data)"
            " VALUES (?, ?, ?, 'video.completed', ?, ?)",
            [
                (f"evt_{i:024d}", i, f"video_{i:08d}", now, json.dumps({**video, "id": f"video_{i:08d}"}))
                for i in range(1, count + 1)
            ],
        )


async def aiohttp_baseline(url: str, bodies: list[bytes], secret: str, concurrency: int) -> float:
    """The same signed POSTs from one bare aiohttp session: sends per second."""
    import aiohttp

    from receiver.rules.signatures import parse_key, sign_v1

    key = parse_key(secret).material
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                msg = "evt_" + str(len(queue))
                ts = str(int(time.time()))
                headers = {
                    "content-type": "application/json",
                    "webhook-id": msg,
                    "webhook-timestamp": ts,
                    "webhook-signature": sign_v1(key, msg, ts, body),
                }
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"subscriber answered {response.status}")

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=600)
        return len(bodies) / (time.monotonic() - started)


async def replay_rate(client: httpx.AsyncClient, url: str, sub_url: str, db: Path) -> tuple[int, float, str]:
    """Subscribe `sub_url`, replay every stored event to it, wait until settled (at most 600 s):
    (delivered, seconds, the subscription's secret). The seconds are the store's own: from the
    replay's queueing to its last send settling. The status is only polled to know it is over, a
    twice a second: each poll counts the replay's sends, work the receiver would do for the
    bench and not for the fan-out."""
    subscription = (await client.post(f"{url}/v1/subscriptions", json={"url": sub_url})).json()
    started = time.monotonic()
    replay = (
        await client.post(f"{url}/v1/events/replay", json={"subscription_id": subscription["id"]})
    ).json()
    deadline = started + 600
    while True:
        status = (await client.get(f"{url}/v1/replays/{replay['id']}")).json()
        if status["done"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    await client.post(f"{url}/v1/subscriptions/{subscription['id']}/pause")
    with sqlite3.connect(db) as conn:
        queued, settled = conn.execute(
            "SELECT min(created_at), max(settled_at) FROM outbox WHERE replay_id = ?", (replay["id"],)
        ).fetchone()
    return status["by_status"].get("delivered", 0), settled - queued, subscription["secret"]


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, every thread) a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / __import__("os").sysconf("SC_CLK_TCK")


def signed(bodies: list[bytes], secret: str) -> list[tuple[str, dict[str, str], bytes]]:
    """The messages as the receiver sends them: (event id, Standard Webhooks headers, body)."""
    from receiver.rules.signatures import parse_key, sign_v1

    key = parse_key(secret).material
    out = []
    for body in bodies:
        event_id = json.loads(body)["id"]
        ts = str(int(time.time()))
        headers = {"webhook-id": event_id, "webhook-timestamp": ts, "webhook-signature": ""}
        headers["webhook-signature"] = sign_v1(key, event_id, ts, body)
        out.append((event_id, headers, body))
    return out


async def _workers(count: int, concurrency: int, one: Any) -> float:
    """Run one(i) for i in range(count) with `concurrency` in flight; per second."""
    queue = list(range(count - 1, -1, -1))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=600)
    return count / (time.monotonic() - started)


class BenchBroker:
    """One broker for `bench fanout`: a fresh place to publish to, the broker's own client
    publishing the same messages with the same confirms (the baseline), and clean-up."""

    def __init__(self, kind: str) -> None:
        import secrets as random_names

        self.kind = kind
        self.name = f"bench_{kind}_{random_names.token_hex(4)}"

    async def setup(self) -> str:
        if self.kind == "amqp":
            import aiormq

            self.conn = await aiormq.connect("amqp://guest:guest@127.0.0.1:5672/")
            self.channel = await self.conn.channel(publisher_confirms=True)
            await self.channel.queue_declare(self.name)
            return f"amqp://guest:guest@127.0.0.1:5672/?routing_key={self.name}"
        if self.kind == "nats":
            import nats

            self.nc = await nats.connect("nats://127.0.0.1:4222")
            self.js = self.nc.jetstream()
            await self.js.add_stream(name=self.name, subjects=[self.name])
            # A stream of its own for the baseline: repeats of the receiver's ids would be dropped.
            await self.js.add_stream(name=f"{self.name}_b", subjects=[f"{self.name}_b"])
            return f"nats://127.0.0.1:4222?subject={self.name}"
        import redis.asyncio

        self.redis = redis.asyncio.Redis(host="127.0.0.1", port=6379, max_connections=256)
        return f"redis://127.0.0.1:6379/0?stream={self.name}"

    async def baseline(self, messages: list[tuple[str, dict[str, str], bytes]], concurrency: int) -> float:
        if self.kind == "amqp":
            from pamqp.commands import Basic

            async def amqp(i: int) -> None:
                event_id, headers, body = messages[i]
                props = Basic.Properties(
                    content_type="application/json",
                    delivery_mode=2,
                    message_id=event_id,
                    headers=dict[str, Any](headers),
                )
                confirm = await self.channel.basic_publish(
                    body, routing_key=self.name, properties=props, mandatory=True
                )
                assert isinstance(confirm, Basic.Ack)

            return await _workers(len(messages), concurrency, amqp)
        if self.kind == "nats":

            async def jetstream(i: int) -> None:
                event_id, headers, body = messages[i]
                await self.js.publish(f"{self.name}_b", body, headers={**headers, "Nats-Msg-Id": event_id})

            return await _workers(len(messages), concurrency, jetstream)

        async def xadd(i: int) -> None:
            event_id, headers, body = messages[i]
            await self.redis.xadd(
                self.name, {"id": event_id, "type": "video.completed", "body": body, **headers}
            )

        return await _workers(len(messages), concurrency, xadd)

    async def close(self) -> None:
        if self.kind == "amqp":
            await self.channel.queue_delete(self.name)
            await self.conn.close()
        elif self.kind == "nats":
            for name in (self.name, f"{self.name}_b"):
                with contextlib.suppress(Exception):
                    await self.js.delete_stream(name)
            await self.nc.close()
        else:
            await self.redis.delete(self.name)
            await self.redis.aclose()


async def bench_fanout(args: argparse.Namespace) -> int:
    from receiver.rules.records import EventRow
    from receiver.workers.dispatcher import event_body

    print(f"machine: {machine()}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    db = scratch / "receiver.db"
    await seed_events(db, args.events)
    port, sink_port = free_port(), free_port()
    sink = await start_bare(sink_port)
    sink_url = f"http://127.0.0.1:{sink_port}/hook"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RECEIVER_")}
    env.update(
        RECEIVER_PORT=str(port),
        RECEIVER_DATABASE_URL=f"sqlite:///{db}",
        RECEIVER_PROVIDER_URL="http://127.0.0.1:9",  # unused: every task is already done
        RECEIVER_WEBHOOK_SECRETS=dev_secret(),
        RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8",
        RECEIVER_FANOUT_CONCURRENCY=str(args.concurrency),
        RECEIVER_REPLAY_MAX_SENDS=str(max(args.events, 10_000)),  # one replay of every event
    )
    if args.per_subscriber is not None:
        env["RECEIVER_FANOUT_PER_SUBSCRIBER"] = str(args.per_subscriber)
    server = await start_receiver(env, scratch)
    url = f"http://127.0.0.1:{port}"
    kinds = ["http", *(k for k in args.brokers.split(",") if k)]
    # kind -> one (delivered, rate, baseline) per round; each round measures every kind in turn,
    # the receiver then the baseline, so that both see the machine as it is at that moment.
    # (and the CPU microseconds per event of each, receiver then baseline)
    results: dict[str, list[tuple[int, float, float, float, float]]] = {kind: [] for kind in kinds}
    try:
        await wait_ready(url, server)
        await wait_ready(f"http://127.0.0.1:{sink_port}", sink, "/")
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT id, video_id, type, created_at, data FROM events ORDER BY pk"
            ).fetchall()
        bodies = [event_body(EventRow(0, r[0], 0, r[1], r[2], r[3], json.loads(r[4]))) for r in rows]
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(args.rounds):
                for kind in kinds:
                    # CPU time per event too (the receiver's process, all its threads; this one's
                    # for the baseline): steadier than rates on a machine shared with other work.
                    spent = process_cpu(server.pid)
                    if kind == "http":
                        delivered, elapsed, secret = await replay_rate(client, url, sink_url, db)
                        spent = process_cpu(server.pid) - spent
                        started = time.process_time()
                        baseline = await aiohttp_baseline(sink_url, bodies, secret, args.concurrency)
                    else:
                        broker = BenchBroker(kind)  # fresh names each round (JetStream dedupes ids)
                        try:
                            broker_url = await broker.setup()
                            delivered, elapsed, secret = await replay_rate(client, url, broker_url, db)
                            spent = process_cpu(server.pid) - spent
                            messages = signed(bodies, secret)
                            started = time.process_time()
                            baseline = await broker.baseline(messages, args.concurrency)
                        finally:
                            await broker.close()
                    cpu = (spent / delivered * 1e6, (time.process_time() - started) / len(bodies) * 1e6)
                    results[kind].append((delivered, delivered / elapsed, baseline, *cpu))
                    print(
                        f"  round {len(results[kind])} {kind}: {delivered / elapsed:,.0f}/s against"
                        f" {baseline:,.0f}/s; CPU per event {cpu[0]:,.0f} us against {cpu[1]:,.0f} us"
                    )
    finally:
        for process in (server, sink):
            process.terminate()
            await process.wait()
    print(
        f"workload: {args.events} stored events replayed to one local destination of each kind, "
        f"at most {args.concurrency} sends in flight (RECEIVER_FANOUT_CONCURRENCY), "
        f"RECEIVER_FANOUT_PER_SUBSCRIBER={args.per_subscriber or 'default'}; "
        f"{args.rounds} interleaved rounds, each kind judged by its median round's ratio"
    )
    ok = True
    names = {
        "http": "bare aiohttp session, same signed POSTs",
        "amqp": "aiormq, same messages, publisher confirms",
        "nats": "nats-py, same messages, JetStream acks",
        "redis": "redis-py asyncio, same XADDs",
    }
    for kind, rounds in results.items():
        target = 0.25 if kind == "http" else 0.5
        ratios = [r[1] / r[2] for r in rounds]
        ratio = statistics.median(ratios)
        delivered = min(r[0] for r in rounds)
        passed = delivered == args.events and ratio >= target
        ok = ok and passed
        rate, baseline, cpu, baseline_cpu = (statistics.median(r[i] for r in rounds) for i in range(1, 5))
        print(
            f"  {kind}: receiver, fewest confirmed and recorded in a round {delivered:,}: {rate:,.0f}/s"
            f" (median), {cpu:,.0f} us of CPU per event"
        )
        print(f"  {kind}: {names[kind]}: {baseline:,.0f}/s (median), {baseline_cpu:,.0f} us of CPU per event")
        print(
            f"  {kind}: ratio {ratio:.1%} (rounds: {', '.join(f'{r:.1%}' for r in ratios)}) "
            f"(target >= {target:.0%}) {'PASS' if passed else 'FAIL'}"
        )
    print("result:", "PASS" if ok else "FAIL", "(every event delivered; http >= 25%, each broker >= 50%)")
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ok else 1
