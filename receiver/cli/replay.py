"""`receiver replay`: replay stored events or inbound deliveries through a running receiver."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, TextIO

import httpx

__all__ = ["add_parser"]


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=30.0)


def _fail(response: httpx.Response) -> int:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    print(f"receiver replay: {response.status_code} {message}", file=sys.stderr)
    return 1


def _bar(done: int, total: int, rate: float, retrying: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    trouble = f"  {retrying} failing, retrying" if retrying else ""
    return f"[{'#' * filled}{' ' * (width - filled)}] {done}/{total} sent  {rate:,.0f}/s{trouble}"


def _events(args: argparse.Namespace, out: TextIO = sys.stderr) -> int:
    body: dict[str, Any] = {}
    for name in ("subscription_id", "video_id", "since", "until"):
        value = getattr(args, name)
        if value is not None:
            body[name] = (
                float(value) if name in ("since", "until") and value.replace(".", "").isdigit() else value
            )
    if args.event_id:
        body["event_ids"] = args.event_id
    with _client(args) as client:
        try:
            response = client.post("/v1/events/replay", json=body)
        except httpx.HTTPError as exc:
            print(f"receiver replay: cannot reach {args.url}: {type(exc).__name__}", file=sys.stderr)
            return 1
        if response.status_code != 200:
            return _fail(response)
        replay = response.json()
        total = replay["sends"]
        if replay["id"] is None:
            print(f"nothing to replay: {replay['events']} events matched, no sends queued", flush=True)
            return 0
        print(f"{replay['id']}: {replay['events']} events, {total} sends queued", flush=True)
        if args.no_wait:
            return 0
        started = time.monotonic()
        deadline = started + args.timeout
        interactive = out.isatty()
        shown_error = None
        while True:
            status = client.get(f"/v1/replays/{replay['id']}")
            if status.status_code != 200:
                return _fail(status)
            progress = status.json()
            counts = progress["by_status"]
            settled = total - counts.get("pending", 0)
            rate = settled / max(time.monotonic() - started, 1e-6)
            line = _bar(settled, total, rate, progress["retrying"])
            if interactive:
                out.write("\r" + line)
                out.flush()
            error = progress["last_error"]
            if error is not None and error != shown_error:
                # Failures as they happen, not only once everything has settled.
                print(f"{chr(10) if interactive else ''}failing: {error}", file=sys.stderr, flush=True)
                shown_error = error
            if progress["done"]:
                break
            if counts.get("delivered", 0) == 0 and progress["retrying"] >= counts.get("pending", 0):
                # Every send has failed at least once and none got through: say so now rather
                # than wait out the retry schedule (the receiver keeps retrying them).
                if interactive:
                    out.write("\n")
                print(
                    f"receiver replay: nothing could be sent ({progress['retrying']} sends failing; "
                    f"last error: {error}); the receiver keeps retrying them "
                    f"(GET /v1/replays/{replay['id']})",
                    file=sys.stderr,
                )
                return 2
            if time.monotonic() > deadline:
                print(f"\nreceiver replay: still running after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        if interactive:
            out.write("\n")
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"done in {elapsed:.1f} s ({total / max(elapsed, 1e-6):,.0f} sends/s): {summary}", flush=True)
        return 0 if counts.get("delivered", 0) == total else 2


def _delivery(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            response = client.post(f"/v1/deliveries/{args.delivery_id}/replay")
        except httpx.HTTPError as exc:
            print(f"receiver replay: cannot reach {args.url}: {type(exc).__name__}", file=sys.stderr)
            return 1
        if response.status_code != 200:
            return _fail(response)
        result = response.json()
        print(f"{result['id']}: {result['replay_outcome']} (video {result['video_id']})")
        return 0


def add_parser(commands: Any) -> None:
    host = os.environ.get("RECEIVER_HOST", "127.0.0.1")
    port = os.environ.get("RECEIVER_PORT", "8000")
    keys = os.environ.get("RECEIVER_API_KEYS", "").replace(",", " ").split()
    replay = commands.add_parser(
        "replay",
        help="replay stored events or inbound deliveries",
        description="Replay through a running receiver: events to subscribers (same event ids), "
        "or an inbound delivery through the transition function (never a second result).",
    )
    replay.add_argument("--url", default=f"http://{host}:{port}", help="the receiver (default %(default)s)")
    replay.add_argument(
        "--api-key",
        default=keys[0] if keys else None,
        help="bearer key (default: the first of RECEIVER_API_KEYS)",
    )
    kinds = replay.add_subparsers(dest="kind", required=True)
    events = kinds.add_parser("events", help="send stored events again, under their own ids")
    events.add_argument("--subscription", dest="subscription_id", help="only to this subscription")
    events.add_argument("--video", dest="video_id", help="only this video's event")
    events.add_argument("--since", help="events recorded at or after (Unix time or ISO-8601)")
    events.add_argument("--until", help="events recorded before (Unix time or ISO-8601)")
    events.add_argument("--event-id", action="append", help="this event (repeatable)")
    events.add_argument("--no-wait", action="store_true", help="queue and return")
    events.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    events.set_defaults(run=_events)
    delivery = kinds.add_parser("delivery", help="run a stored inbound delivery through again")
    delivery.add_argument("delivery_id")
    delivery.set_defaults(run=_delivery)
