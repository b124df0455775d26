"""`receiver backup PATH`: a consistent copy of the SQLite store, taken while `serve` runs."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "backup"]


def backup(source: str, target: Path) -> int:
    """Copy the SQLite database at `source` to `target` with SQLite's online backup API; the
    pages copied. The copy is written beside `target` and renamed into place, so a failed
    backup never leaves a torn file under the name.

    One step, not pages with pauses between: a paged backup starts over whenever another
    connection writes between two steps, so under a steady stream of deliveries it may never
    end. In WAL mode (the store's) one step is one read transaction, which never blocks the
    writer: `serve` keeps acknowledging throughout and the copy is the database as of its start."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            # The copy stands alone: its pages in the file itself, not in a -wal beside it.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    with partial.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(partial, target)
    return pages


def _run(args: argparse.Namespace) -> int:
    from receiver.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(dict(os.environ))
    except SettingsError as exc:
        print(f"receiver backup: {exc}", file=sys.stderr)
        return 2
    url = settings.database_url
    if not url.startswith("sqlite://"):
        print(
            "receiver backup: RECEIVER_DATABASE_URL is not SQLite; back up PostgreSQL with pg_dump",
            file=sys.stderr,
        )
        return 2
    source = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url[len("sqlite://") :]
    if not Path(source).is_file():
        print(f"receiver backup: no SQLite store at {source!r} (RECEIVER_DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        pages = backup(source, Path(args.path))
    except (OSError, sqlite3.Error) as exc:
        print(f"receiver backup: {exc}", file=sys.stderr)
        return 1
    print(f"receiver backup: {pages} pages copied to {args.path}")
    return 0


def add_parser(commands: Any) -> None:
    command = commands.add_parser(
        "backup",
        help="write a consistent copy of the SQLite store (while serve runs)",
        description="Copy the SQLite store named by RECEIVER_DATABASE_URL to PATH with SQLite's "
        "online backup API; serve keeps acknowledging meanwhile. For PostgreSQL use pg_dump.",
    )
    command.add_argument("path", help="where to write the copy (replaced if it exists)")
    command.set_defaults(run=_run)
