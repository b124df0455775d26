"""Where kept result files live: the MediaStore interface and its local-directory implementation."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from starlette.responses import FileResponse, Response

__all__ = [
    "KEY_SEGMENT",
    "LocalMedia",
    "MediaStore",
    "MediaUnavailable",
    "MediaWriter",
    "S3Location",
    "media_store",
]

# One segment of a media key or of an S3 prefix: plain names only, so a key means the same
# path in a directory and in a bucket.
KEY_SEGMENT = re.compile(r"[A-Za-z0-9._=-]+", re.ASCII)


class MediaUnavailable(OSError):
    """The media store could not be reached or refused a call; the caller retries later.

    An OSError, so a capture treats it as it treats a broken download: retried with backoff."""


@dataclass(frozen=True)
class S3Location:
    """Where files go (RECEIVER_MEDIA_URL=s3://bucket/prefix) and how to reach the store (AWS_*)."""

    bucket: str
    prefix: str  # no leading or trailing slash; may be empty
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None  # None: botocore's own chain (instance role, profile, ...)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


class MediaWriter(Protocol):
    async def write(self, chunk: bytes) -> None: ...
    async def commit(self) -> None: ...  # the file appears whole under its key, or not at all
    async def abort(self) -> None: ...


class MediaStore(Protocol):
    """Where kept files live: a local directory (LocalMedia) or an S3-compatible bucket
    (receiver.media_s3.S3Media). Keys are relative paths such as `17/video`."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def writer(self, key: str) -> MediaWriter: ...
    # None when no file is kept under the key; the answer honours Range.
    async def response(self, key: str, media_type: str, filename: str) -> Response | None: ...
    async def delete(self, key: str) -> None: ...  # deleting a missing key is not an error


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


def media_store(directory: str, s3: S3Location | None) -> MediaStore:
    """The configured store: the bucket when RECEIVER_MEDIA_URL names one, else the directory."""
    if s3 is None:
        return LocalMedia(Path(directory))
    from receiver.media_s3 import S3Media  # the S3 client loads only when a bucket is configured

    return S3Media(s3)
