"""Kept result files in a local directory: the embedded default."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

from starlette.responses import FileResponse, Response

from receiver.media.base import MediaWriter

__all__ = ["LocalMedia"]


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        self._final = final
        self._partial = final.with_name(f".{final.name}.{secrets.token_hex(6)}.partial")
        final.parent.mkdir(parents=True, exist_ok=True)
        # Whoever holds the capture's lease is its only writer: a partial file left for this key
        # is a crashed attempt's.
        for stale in final.parent.glob(f".{final.name}.*.partial"):
            stale.unlink(missing_ok=True)
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed by commit or abort

    async def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    async def commit(self) -> None:
        def finish() -> None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._partial, self._final)

        await asyncio.to_thread(finish)

    async def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalMedia:
    """Files under one directory, written beside their final name and renamed into place, so a
    crash mid-download leaves at most a `.partial` file and never a torn one under the key."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError("media key outside the media directory")
        return path

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def writer(self, key: str) -> MediaWriter:
        return _LocalWriter(self._path(key))

    async def response(self, key: str, media_type: str, filename: str) -> Response | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return FileResponse(path, media_type=media_type, filename=filename)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
