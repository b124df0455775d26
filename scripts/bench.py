"""Benchmarks of the receiver, each against a baseline measured in the same invocation.

    scripts/bench polling   learned poll schedule vs a naive fixed-interval poller
    scripts/bench ingest    signed deliveries/s into the real service vs a bare Starlette endpoint,
                            on SQLite and on PostgreSQL with one and two processes
    scripts/bench fanout    signed events/s delivered to a subscriber vs a bare aiohttp session, and
                            to RabbitMQ, NATS JetStream and Redis Streams vs each one's own client
    scripts/bench scale     read latency with 1,000,000 deliveries and 200,000 tasks in the store;
                            /metrics and /v1/stats at 10,000 and at 1,000,000 tasks
    scripts/bench soak      10 minutes at half the ingest rate with a short retention, sampled
                            every 10 s: p99 ack latency, RSS, open files, database and media size
    scripts/bench storepath the store's delivery path alone: group commit vs a transaction each
    scripts/bench driver    asyncpg vs psycopg 3 on the ack path's read and batch insert
    scripts/bench media     files kept into S3 through the receiver vs the S3 client uploading
                            them directly; peak RSS growth while keeping a 1 GB file

All traffic stays on 127.0.0.1; every load loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks.driver import bench_driver
from benchmarks.fanout import bench_fanout
from benchmarks.ingest import bench_ingest
from benchmarks.media import bench_media
from benchmarks.polling import bench_polling
from benchmarks.scale import bench_scale
from benchmarks.soak import bench_soak
from benchmarks.storepath import bench_storepath


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    polling = commands.add_parser("polling", help="learned poll schedule vs a naive fixed-interval poller")
    polling.add_argument("--tasks", type=int, default=2000, help="tasks per run (4 runs, then 2 outage runs)")
    polling.add_argument("--rate", type=float, default=30.0, help="submits per second")
    polling.add_argument("--scale", type=float, default=30.0, help="provider seconds per real second")
    polling.add_argument("--seed", type=int, default=1)
    polling.add_argument("--phase", type=float, default=30.0, help="seconds of each outage-run phase")
    polling.add_argument("--outage-rate", type=float, default=8.0, help="submits per second, outage runs")
    polling.add_argument("--only-outage", action="store_true", help="run only the outage scenario")
    polling.set_defaults(run=bench_polling)
    ingest = commands.add_parser("ingest", help="durable deliveries/s vs a bare Starlette endpoint (wrk)")
    ingest.add_argument("--tasks", type=int, default=3000)
    ingest.add_argument("--requests", type=int, default=250_000, help="prepared deliveries (wrk cycles)")
    ingest.add_argument("--seconds", type=int, default=10)
    ingest.add_argument("--connections", type=int, default=64)
    ingest.add_argument("--seed", type=int, default=1)
    ingest.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is judged)")
    ingest.add_argument("--keep", action="store_true", help="keep the scratch folder (store, server log)")
    ingest.add_argument(
        "--against",
        type=Path,
        help="a checkout of another version (git worktree add DIR COMMIT): each round also runs"
        " SQLite from it, and the ratio of this tree to it is printed",
    )
    ingest.add_argument(
        "--database-url",
        help="PostgreSQL server for the PostgreSQL runs (a scratch database is made on it); default:"
        " RECEIVER_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres if it answers",
    )
    ingest.set_defaults(run=bench_ingest)
    fanout = commands.add_parser("fanout", help="events/s delivered to a subscriber vs bare aiohttp")
    fanout.add_argument("--events", type=int, default=20_000)
    fanout.add_argument("--concurrency", type=int, default=64)
    fanout.add_argument("--per-subscriber", type=int, help="RECEIVER_FANOUT_PER_SUBSCRIBER (default: unset)")
    fanout.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is judged)")
    fanout.add_argument(
        "--brokers",
        default="amqp,nats,redis",
        help="brokers to measure after HTTP, on their local servers (comma-separated; '' for none)",
    )
    fanout.set_defaults(run=bench_fanout)
    scale = commands.add_parser(
        "scale",
        help="read latency with 1,000,000 deliveries; /metrics and /v1/stats at 10,000 and 1,000,000 tasks",
    )
    scale.add_argument("--tasks", type=int, default=200_000)
    scale.add_argument("--deliveries", type=int, default=1_000_000)
    scale.add_argument("--requests", type=int, default=2000)
    scale.add_argument("--seed", type=int, default=1)
    scale.add_argument(
        "--count-tasks",
        default="10000,1000000",
        help="store sizes for /metrics and /v1/stats (smallest, largest)",
    )
    scale.add_argument("--count-requests", type=int, default=300, help="requests per route and size")
    scale.add_argument("--only", choices=["reads", "counts"], help="run one part (default: both)")
    scale.add_argument("--database-url", help="PostgreSQL server (a scratch database is made on it)")
    scale.set_defaults(run=bench_scale)
    soak = commands.add_parser(
        "soak",
        help="hours of service in minutes: half the ingest rate, retention cycling, sampled every 10 s",
    )
    soak.add_argument("--seconds", type=int, default=600, help="load per backend")
    soak.add_argument("--retention", type=int, default=60, help="RECEIVER_RETENTION (task rows: twice it)")
    soak.add_argument("--prune-interval", type=int, default=10, help="RECEIVER_PRUNE_INTERVAL")
    soak.add_argument("--tasks-per-round", type=int, default=200, help="tasks submitted every 10 s")
    soak.add_argument(
        "--check-copies", type=int, default=100, help="acknowledged deliveries re-sent per round"
    )
    soak.add_argument("--calibrate-seconds", type=int, default=5, help="the ingest run that sets the rate")
    soak.add_argument("--backends", default="sqlite,postgres")
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--database-url", help="PostgreSQL server (a scratch database is made on it)")
    soak.set_defaults(run=bench_soak)
    path = commands.add_parser(
        "storepath", help="the store's delivery path alone: group commit vs one transaction each"
    )
    path.add_argument("--tasks", type=int, default=3000)
    path.add_argument("--deliveries", type=int, default=60_000)
    path.add_argument("--concurrency", type=int, default=64)
    path.add_argument("--seconds", type=float, default=8.0)
    path.add_argument("--database-url", help="PostgreSQL server (a scratch database is made on it)")
    path.set_defaults(run=bench_storepath)
    driver = commands.add_parser(
        "driver", help="asyncpg vs psycopg 3 on the ack path's read and batch insert (same run)"
    )
    driver.add_argument("--tasks", type=int, default=3000)
    driver.add_argument("--batches", type=int, default=1500, help="batches of 32 per driver run")
    driver.add_argument("--seconds", type=float, default=15.0, help="time cap of each driver run")
    driver.add_argument("--database-url", help="PostgreSQL server (a scratch database is made on it)")
    driver.set_defaults(run=bench_driver)
    media = commands.add_parser(
        "media", help="files kept into S3 through the receiver vs direct uploads; RSS while keeping 1 GB"
    )
    media.add_argument("--small-files", type=int, default=16, help="1 MB files kept at once")
    media.add_argument("--rounds", type=int, default=3, help="rounds of each size (the median is judged)")
    media.add_argument("--big-mib", type=int, default=1024, help="size of the file whose RSS is measured")
    media.add_argument("--s3-url", help="an S3-compatible endpoint (default: moto's server, started here)")
    media.add_argument(
        "--against",
        type=Path,
        help="a checkout of another version (git worktree add DIR COMMIT): each round also keeps the"
        " same files through a receiver run from it, and this tree's speed against it is printed",
    )
    media.set_defaults(run=bench_media)
    args = parser.parse_args(argv)
    logging.getLogger("receiver").setLevel(logging.ERROR)  # no start-up warnings between figures
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: int = runner(args.run(args))
    return result


if __name__ == "__main__":
    sys.exit(main())
