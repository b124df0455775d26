"""SQLite schema versions: PRAGMA user_version counts the steps applied; a step is never edited.

Steps 1-3 are the `-- migration N` sections of schema.sql, step 4 a Python function (a repair
plain SQL cannot make conditionally), steps 5 on the sections of later.sql.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from importlib import resources

__all__ = ["migrate", "steps"]

Step = str | Callable[[sqlite3.Connection], None]


def _repair_deliveries(conn: sqlite3.Connection) -> None:
    """Step 4. Migration 1 was changed after it shipped: its first release gave deliveries an
    `id TEXT NOT NULL UNIQUE` column (and the tasks three counters) that later code no longer
    writes, so every delivery insert into such a database failed, and its stale counters hid the
    derived ones. Rebuild that table in the
    shape every later release made; a database made by a later release is left as it is."""
    task_columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    for obsolete in ("deliveries", "duplicates", "last_delivery_at"):
        # Counters that later releases derive from the delivery rows; left in place, the stale
        # column would shadow the derived count of the same name.
        if obsolete in task_columns:
            conn.execute(f"ALTER TABLE tasks DROP COLUMN {obsolete}")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(deliveries)")]
    if "id" not in columns:
        return
    keep = [c for c in columns if c != "id"]
    listed = ", ".join(keep)
    conn.execute(
        """CREATE TABLE deliveries_new (
            pk           INTEGER PRIMARY KEY,
            dedupe_key   TEXT NOT NULL UNIQUE,
            task_pk      INTEGER REFERENCES tasks (pk) ON DELETE SET NULL,
            video_id     TEXT,
            route        TEXT NOT NULL,
            verified_by  TEXT NOT NULL,
            headers      TEXT NOT NULL,
            body         BLOB NOT NULL,
            event_type   TEXT,
            status       TEXT,
            outcome      TEXT NOT NULL,
            repeats      INTEGER NOT NULL DEFAULT 0,
            received_at  REAL NOT NULL,
            last_seen_at REAL NOT NULL
        )"""
    )
    conn.execute(f"INSERT INTO deliveries_new ({listed}) SELECT {listed} FROM deliveries")
    conn.execute("DROP TABLE deliveries")
    conn.execute("ALTER TABLE deliveries_new RENAME TO deliveries")
    conn.execute("CREATE INDEX deliveries_video ON deliveries (video_id, pk)")
    conn.execute("CREATE INDEX deliveries_unmatched ON deliveries (video_id) WHERE outcome = 'unmatched'")


def _sql(name: str) -> list[Step]:
    text = resources.files("store.sqlite").joinpath(name).read_text("utf-8")
    return [p for p in re.split(r"^-- migration \d+:.*$", text, flags=re.M) if p.strip()]


def steps() -> list[Step]:
    return [*_sql("schema.sql"), _repair_deliveries, *_sql("later.sql")]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the newest version, one step per transaction; returns it."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    all_steps = steps()
    for number, step in enumerate(all_steps[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(step, str):
                for statement in _statements(step):
                    conn.execute(statement)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return len(all_steps)


def _statements(script: str) -> list[str]:
    """A migration's statements (executescript would commit the open transaction first)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current)
            current = ""
    if current.strip() and re.sub(r"--[^\n]*", "", current).strip():
        out.append(current)
    return out
