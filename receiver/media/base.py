"""What every place for kept result files offers: the MediaStore interface, its writer, its errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from starlette.responses import Response

__all__ = ["KEY_SEGMENT", "MediaStore", "MediaUnavailable", "MediaWriter", "S3Location"]

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
    (receiver.media.s3.S3Media). Keys are relative paths such as `17/video`."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def writer(self, key: str) -> MediaWriter: ...
    # None when no file is kept under the key; the answer honours Range.
    async def response(self, key: str, media_type: str, filename: str) -> Response | None: ...
    async def delete(self, key: str) -> None: ...  # deleting a missing key is not an error
