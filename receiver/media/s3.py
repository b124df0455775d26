"""Kept files in an S3-compatible bucket: streamed in by multipart upload, streamed out by ranged GETs."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from receiver.errors import InvalidRequest, NotFound, Unavailable
from receiver.media.base import KEY_SEGMENT, MediaUnavailable, MediaWriter, S3Location

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ["S3Media", "parse_range"]

# S3 takes parts of 5 MiB or more (the last may be smaller) and 10,000 parts at most. Parts grow
# by 6 MiB every thousand, so a file of up to about 330 GB fits. Memory holds the part being
# filled plus PARTS_IN_FLIGHT parts being sent, each of those twice (the HTTP client copies the
# body): about 30 MiB per file being kept, whatever its size.
PART_SIZE = 6 * 1024 * 1024
PARTS_IN_FLIGHT = 2
READ_CHUNK = 256 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def _unavailable(what: str, exc: BaseException) -> MediaUnavailable:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        detail = f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return MediaUnavailable(f"media store: {what} failed ({detail})"[:300])


def _serving_failed(exc: BaseException) -> Unavailable:
    """A read the client asked for: 503 in the error shape, so it retries (maybe elsewhere)."""
    return Unavailable(str(_unavailable("reading a file", exc)), code="media_unavailable")


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


_FAILURES = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


class S3Media:
    """Files as objects under `{prefix}/` in one bucket. A file appears under its key only when
    its upload completes, so a crash mid-download leaves no torn object behind (an unfinished
    multipart upload is invisible, and aborted by the writer where it can)."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Media used before open()")
        return self._client

    async def open(self) -> None:
        loc = self.location
        config = AioConfig(
            connect_timeout=10,
            read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
            # Other S3-compatible stores do not all take the trailing checksums newer botocore
            # sends by default; the parts' own MD5/ETag checks still apply.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # A custom endpoint (MinIO, Ceph, R2, moto) is addressed by path; AWS itself by host.
            s3={"addressing_style": "path" if loc.endpoint_url else "auto"},
            max_pool_connections=32,
        )
        creator = get_session().create_client(
            "s3",
            region_name=loc.region,
            endpoint_url=loc.endpoint_url,
            aws_access_key_id=loc.access_key_id,
            aws_secret_access_key=loc.secret_access_key,
            aws_session_token=loc.session_token,
            config=config,
        )
        self._client = await self._stack.enter_async_context(creator)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def check(self) -> None:
        """Raise MediaUnavailable unless the bucket answers to these credentials."""
        try:
            await self.client.head_bucket(Bucket=self.location.bucket)
        except _FAILURES as exc:
            raise _unavailable(f"reaching bucket {self.location.bucket!r}", exc) from None

    def object_key(self, key: str) -> str:
        parts = key.split("/")
        if not all(KEY_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts):
            raise ValueError(f"media key {key!r} is not a relative path of plain names")
        return f"{self.location.prefix}/{key}" if self.location.prefix else key

    def writer(self, key: str) -> MediaWriter:
        return _S3Writer(self.client, self.location.bucket, self.object_key(key))

    async def response(self, key: str, media_type: str, filename: str) -> Response | None:
        name = self.object_key(key)
        try:
            head = await self.client.head_object(Bucket=self.location.bucket, Key=name)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise _serving_failed(exc) from None
        except _FAILURES as exc:
            raise _serving_failed(exc) from None
        return _ObjectResponse(
            self.client,
            self.location.bucket,
            name,
            size=int(head["ContentLength"]),
            etag=head.get("ETag", ""),
            last_modified=format_datetime(head["LastModified"].astimezone(UTC), usegmt=True),
            media_type=media_type,
            filename=filename,
        )

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.location.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if not _missing(exc):
                raise _unavailable("deleting a file", exc) from None
        except _FAILURES as exc:
            raise _unavailable("deleting a file", exc) from None


class _S3Writer:
    """Buffers one part at a time and sends parts while the download goes on; a file smaller
    than one part is one PUT."""

    def __init__(self, client: S3Client, bucket: str, name: str) -> None:
        self._client = client
        self._bucket = bucket
        self._name = name
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._sending: set[asyncio.Task[None]] = set()

    def _part_size(self) -> int:
        return PART_SIZE * (1 + len(self._parts) // 1000)

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= self._part_size():
            await self._send(self._take())

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return data

    async def _send(self, data: bytes) -> None:
        try:
            if self._upload_id is None:
                started = await self._client.create_multipart_upload(Bucket=self._bucket, Key=self._name)
                self._upload_id = started["UploadId"]
            while len(self._sending) >= PARTS_IN_FLIGHT:
                done, _ = await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
                self._sending -= done
                for task in done:
                    task.result()
        except _FAILURES as exc:
            raise _unavailable("uploading a part", exc) from None
        number = len(self._parts) + 1
        self._parts[number] = ""  # reserved, so the next part takes the next number
        self._sending.add(asyncio.create_task(self._upload(number, data)))

    async def _upload(self, number: int, data: bytes) -> None:
        assert self._upload_id is not None
        answer = await self._client.upload_part(
            Bucket=self._bucket, Key=self._name, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts[number] = answer["ETag"]

    async def commit(self) -> None:
        try:
            if self._upload_id is None:
                await self._client.put_object(Bucket=self._bucket, Key=self._name, Body=self._take())
                return
            if self._pending_size or not self._parts:
                await self._send(self._take())
            sending, self._sending = self._sending, set()
            for result in await asyncio.gather(*sending, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._name,
                UploadId=self._upload_id,
                MultipartUpload={
                    "Parts": [{"ETag": etag, "PartNumber": n} for n, etag in sorted(self._parts.items())]
                },
            )
        except _FAILURES as exc:
            raise _unavailable("completing an upload", exc) from None

    async def abort(self) -> None:
        self._pending.clear()
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        self._sending.clear()
        if self._upload_id is not None:
            # Best effort: an upload left behind is invisible, and a bucket lifecycle rule
            # (AbortIncompleteMultipartUpload) reclaims it.
            with contextlib.suppress(*_FAILURES):
                await self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._name, UploadId=self._upload_id
                )
            self._upload_id = None


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range [start, end) a Range header asks of a file of `size` bytes, None for
    the whole file (several ranges are answered whole, as RFC 9110 allows), with the same
    refusals as the directory store: InvalidRequest 400 malformed, 416 not satisfiable."""
    units, sep, spec = header.partition("=")
    if not sep or units.strip().lower() != "bytes":
        raise _malformed()
    wanted = [p.strip() for p in spec.split(",") if p.strip() not in ("", "-")]
    if not wanted:
        raise _malformed()
    if len(wanted) > 1:
        return None
    first, dash, last = wanted[0].partition("-")
    if not dash:
        raise _malformed()
    first, last = first.strip(), last.strip()
    if (first and not first.isdigit()) or (last and not last.isdigit()) or not first.isascii():
        raise _malformed()
    if not last.isascii():
        raise _malformed()
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    if not 0 <= start < size:
        raise InvalidRequest(
            "the Range cannot be satisfied", param="Range", code="range_not_satisfiable", status=416
        )
    if start >= end:
        raise _malformed()
    return start, end


def _malformed() -> InvalidRequest:
    return InvalidRequest("the Range header is malformed", param="Range", code="invalid_range", status=400)


class _ObjectResponse(Response):
    """One object streamed from the bucket, whole or one range, a chunk at a time."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        name: str,
        *,
        size: int,
        etag: str,
        last_modified: str,
        media_type: str,
        filename: str,
    ) -> None:
        super().__init__(media_type=media_type)
        self._client = client
        self._bucket = bucket
        self._name = name
        self._size = size
        quoted = quote(filename)
        disposition = (
            f"attachment; filename*=utf-8''{quoted}"
            if quoted != filename
            else f'attachment; filename="{filename}"'
        )
        self.headers["accept-ranges"] = "bytes"
        self.headers["content-disposition"] = disposition
        if etag:
            self.headers["etag"] = etag
        if last_modified:
            self.headers["last-modified"] = last_modified

    def _range(self, scope: Scope) -> tuple[int, int] | None:
        headers = Headers(scope=scope)
        http_range = headers.get("range")
        if http_range is None or scope.get("method", "GET").upper() not in ("GET", "HEAD"):
            return None
        if_range = headers.get("if-range")
        if if_range is not None and if_range not in (
            self.headers.get("etag"),
            self.headers.get("last-modified"),
        ):
            return None
        return parse_range(http_range, self._size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            wanted = self._range(scope)
        except InvalidRequest as exc:
            extra = {"content-range": f"bytes */{self._size}"} if exc.status == 416 else {}
            await Response(status_code=exc.status, headers=extra, media_type="text/plain")(
                scope, receive, send
            )
            return
        start, end = wanted if wanted is not None else (0, self._size)
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        headers.append((b"content-length", str(end - start).encode()))
        status = 200
        if wanted is not None:
            status = 206
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{self._size}".encode()))
        if scope.get("method", "GET").upper() == "HEAD" or end == start:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        options: dict[str, Any] = {"Bucket": self._bucket, "Key": self._name}
        if wanted is not None:
            options["Range"] = f"bytes={start}-{end - 1}"
        try:
            answer = await self._client.get_object(**options)
        except ClientError as exc:
            if _missing(exc):
                raise NotFound(
                    "the kept file is missing from the media store", param="variant", code="content_missing"
                ) from None
            raise _serving_failed(exc) from None
        except _FAILURES as exc:
            raise _serving_failed(exc) from None
        body = answer["Body"]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            sent = 0
            async for chunk in body.iter_chunks(READ_CHUNK):
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if sent != end - start:
                # The client sees a short body against its Content-Length and retries; say why here.
                raise _unavailable("reading a file", EOFError(f"got {sent} of {end - start} bytes"))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await body.aclose()
