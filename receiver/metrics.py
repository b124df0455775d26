"""Prometheus metrics: counters kept in process, gauges read from the store at scrape time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from receiver.rules.health import ARRIVING, STOPPED, Health
from receiver.rules.records import OutboxStats, PruneRun, TaskStats
from store import Store

HEALTH_VALUES = {ARRIVING: 1.0, STOPPED: 0.0}  # anything else (unknown): -1

__all__ = ["Metrics"]


class _StoreGauges(Collector):
    """Yields the gauges of the last store snapshot (taken by Metrics.render just before)."""

    def __init__(self) -> None:
        self.snapshot: TaskStats | None = None
        self.outbox: OutboxStats | None = None
        self.health: Mapping[str, Health] = {}
        self.captures: dict[str, int] = {}
        self.prune = PruneRun()
        self.now = 0.0

    def collect(self) -> list[GaugeMetricFamily]:
        snapshot = self.snapshot
        if snapshot is None:
            return []
        tasks = GaugeMetricFamily(
            "receiver_tasks", "Tasks by state and by how their result came", labels=["status", "resolved_by"]
        )
        for (status, resolved_by), count in sorted(snapshot.by_state.items()):
            tasks.add_metric([status, resolved_by or ""], count)
        oldest = GaugeMetricFamily(
            "receiver_oldest_open_task_age_seconds",
            "Age of the oldest task with no terminal result (0: none)",
        )
        oldest.add_metric(
            [],
            max(0.0, self.now - snapshot.oldest_open_created_at)
            if snapshot.oldest_open_created_at is not None
            else 0.0,
        )
        sends = GaugeMetricFamily(
            "receiver_outbound_sends",
            "Outbound sends (one event to one subscriber) by state; dead = dead letters",
            labels=["status"],
        )
        for status, count in sorted((self.outbox.by_status if self.outbox else {}).items()):
            sends.add_metric([status], count)
        captures = GaugeMetricFamily(
            "receiver_captures", "Result files to keep, by state (pending, kept, failed)", labels=["status"]
        )
        for status in ("pending", "kept", "failed"):
            captures.add_metric([status], self.captures.get(status, 0))
        dead = GaugeMetricFamily("receiver_dead_letters", "Sends that exhausted every retry")
        dead.add_metric([], (self.outbox.by_status if self.outbox else {}).get("dead", 0))
        health = GaugeMetricFamily(
            "receiver_delivery_health",
            "Whether the provider's deliveries arrive, per model: 1 arriving, 0 stopped, -1 unknown",
            labels=["model"],
        )
        for model, judged in sorted(self.health.items()):
            health.add_metric([model], HEALTH_VALUES.get(judged.state, -1.0))
        # The last whole pass in the fleet (whichever process held the lease), 0 before any.
        last_run = GaugeMetricFamily(
            "receiver_prune_last_run_timestamp_seconds",
            "When the last whole pruning pass started (0: none yet)",
        )
        last_run.add_metric([], self.prune.at or 0.0)
        last_took = GaugeMetricFamily(
            "receiver_prune_last_duration_seconds", "How long the last whole pruning pass took"
        )
        last_took.add_metric([], self.prune.took or 0.0)
        return [tasks, oldest, sends, dead, health, captures, last_run, last_took]


class Metrics:
    """One registry per app: no global state, so several apps (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.deliveries = Counter(
            "receiver_deliveries", "Webhook deliveries by outcome", ["outcome"], registry=self.registry
        )
        self.polls = Counter("receiver_polls", "Provider GETs by result", ["result"], registry=self.registry)
        self.fanout = Counter(
            "receiver_fanout_attempts",
            "Outbound sends by outcome (delivered, retry, failed, dead)",
            ["outcome"],
            registry=self.registry,
        )
        self.captures = Counter(
            "receiver_capture_attempts",
            "Result file downloads by outcome (kept, failed, retry)",
            ["outcome"],
            registry=self.registry,
        )
        self.pruned_rows = Counter(
            "receiver_pruned_rows",
            "Rows this process's pruning passes deleted (delivery_bodies: emptied; files: kept files)",
            ["table"],
            registry=self.registry,
        )
        self._delivery_children: dict[str, Any] = {}
        self._gauges = _StoreGauges()
        self.registry.register(self._gauges)

    def delivery(self, outcome: str) -> None:
        """Count one delivery by outcome (the labelled child is cached: this is the ack path)."""
        child = self._delivery_children.get(outcome)
        if child is None:
            child = self._delivery_children[outcome] = self.deliveries.labels(outcome=outcome)
        child.inc()

    def pruned(self, counts: Mapping[str, int]) -> None:
        for table, n in counts.items():
            self.pruned_rows.labels(table=table).inc(n)

    async def render(self, store: Store, now: float, health: Mapping[str, Health] | None = None) -> bytes:
        self._gauges.snapshot = await store.task_stats()
        self._gauges.outbox = await store.outbox_stats()
        self._gauges.health = health or {}
        self._gauges.captures = await store.capture_stats()
        self._gauges.prune = await store.last_prune()
        self._gauges.now = now
        return generate_latest(self.registry)
