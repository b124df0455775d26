"""What a pruning pass would delete now (`receiver prune --dry-run`), as the count statements
every backend runs: written once here, with the backend's placeholder spelling."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["preview_counts"]

NEVER = -1.0  # a cut-off no row is before: that kind is kept


def preview_counts(
    mark: Callable[[int], str],
    bodies_before: float,
    tasks_before: float | None,
    files_before: float | None,
) -> list[tuple[str, str, tuple[float, ...]]]:
    """(table, count statement, its arguments) for each kind of row a pass deletes; `mark(n)`
    spells the n-th placeholder (`?` or `$n`). Counts of one table add up."""
    one = mark(1)
    count = "SELECT count(*) FROM"
    ended = f"SELECT pk FROM tasks WHERE terminal_at < {one} AND pruned_at IS NULL"
    events = f"SELECT pk FROM events WHERE task_pk IN ({ended})"
    b = (bodies_before,)
    out: list[tuple[str, str, tuple[float, ...]]] = [
        ("events", f"{count} ({events}) e", b),
        ("outbox", f"{count} outbox WHERE event_pk IN ({events})", b),
        (
            "attempts",
            f"{count} attempts WHERE outbox_pk IN (SELECT pk FROM outbox WHERE event_pk IN ({events}))",
            b,
        ),
        (
            "delivery_bodies",
            f"{count} deliveries WHERE pruned_at IS NULL AND task_pk IN ({ended})",
            b,
        ),
        (
            "delivery_bodies",
            f"{count} deliveries WHERE task_pk IS NULL AND pruned_at IS NULL AND received_at < {one}",
            b,
        ),
    ]
    if tasks_before is not None:
        gone = f"SELECT pk FROM tasks WHERE terminal_at < {one}"
        t = (tasks_before,)
        out += [
            ("tasks", f"{count} ({gone}) t", t),
            ("deliveries", f"{count} deliveries WHERE task_pk IN ({gone})", t),
            (
                "deliveries",
                f"{count} deliveries WHERE task_pk IS NULL AND received_at < {one}",
                t,
            ),
        ]
    # A file kept past its retention, or one of a task whose rows go: counted once.
    out.append(
        (
            "files",
            f"{count} captures c JOIN tasks t ON t.pk = c.task_pk"
            f" WHERE c.status = 'kept' AND (c.settled_at < {one} OR t.terminal_at < {mark(2)})",
            (
                NEVER if files_before is None else files_before,
                NEVER if tasks_before is None else tasks_before,
            ),
        )
    )
    return out
