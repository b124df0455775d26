"""One media-store contract, every store: the same cases on a directory and on an S3 bucket,
files served over a real loopback socket."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.media.base import MediaStore, S3Location
from receiver.media.directory import LocalMedia
from receiver.media.s3 import S3Media
from receiver.routes.content import RangeErrorsAsJson
from tests.conftest import s3_client, s3_env, serve

pytestmark = pytest.mark.anyio

PREFIX = "team/media"
BLOB = bytes(range(256)) * 40  # 10240 bytes, every byte value, so a shifted range shows


class Kind:
    """A store under test and a way to look at what it left behind, beside its own interface."""

    def __init__(self, media: MediaStore, leftovers: Any, stored: Any) -> None:
        self.media = media
        self.leftovers = leftovers  # () -> names of partial files / unfinished uploads
        self.stored = stored  # () -> every name the store holds, as the store names it


@pytest.fixture(params=["directory", "s3"])
async def kind(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kind]:
    if request.param == "directory":
        root = tmp_path / "media"
        media: MediaStore = LocalMedia(root)

        def files() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

        kind = Kind(media, lambda: [f for f in files() if f.endswith(".partial")], files)
    else:
        endpoint: str = request.getfixturevalue("s3_endpoint")
        bucket: str = request.getfixturevalue("s3_bucket")
        client = s3_client(endpoint)
        media = S3Media(
            S3Location(
                bucket=bucket,
                prefix=PREFIX,
                endpoint_url=endpoint,
                access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            )
        )

        def uploads() -> list[str]:
            return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

        def objects() -> list[str]:
            return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))

        kind = Kind(media, uploads, objects)
    await kind.media.open()
    try:
        yield kind
    finally:
        await kind.media.close()


@contextlib.asynccontextmanager
async def served(media: MediaStore) -> AsyncIterator[httpx.AsyncClient]:
    """The store's answers as the content route gives them, over a loopback socket."""

    async def content(request: Request) -> Response:
        answer = await media.response(request.path_params["key"], "video/mp4", "clip.mp4")
        if answer is None:
            return Response(status_code=404)
        return RangeErrorsAsJson(answer)

    app = Starlette(routes=[Route("/{key:path}", content, methods=["GET", "HEAD"])])
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


async def put(media: MediaStore, key: str, data: bytes, chunk: int = 1000) -> None:
    writer = media.writer(key)
    for at in range(0, len(data), chunk):
        await writer.write(data[at : at + chunk])
    await writer.commit()


async def test_a_committed_file_is_served_whole(kind: Kind) -> None:
    await put(kind.media, "1/video", BLOB)
    async with served(kind.media) as client:
        answer = await client.get("/1/video")
        head = await client.head("/1/video")
    assert answer.status_code == 200
    assert answer.content == BLOB
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["content-length"] == str(len(BLOB))
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["content-disposition"] == 'attachment; filename="clip.mp4"'
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(BLOB))


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 20),
        ("bytes=10000-", 10000, 10240),
        ("bytes=-100", 10140, 10240),
        ("bytes=10200-99999", 10200, 10240),
        ("bytes=-99999", 0, 10240),
    ],
)
async def test_a_range_is_served_as_206(kind: Kind, spec: str, start: int, end: int) -> None:
    await put(kind.media, "1/video", BLOB)
    async with served(kind.media) as client:
        answer = await client.get("/1/video", headers={"Range": spec})
    assert answer.status_code == 206
    assert answer.content == BLOB[start:end]
    assert answer.headers["content-range"] == f"bytes {start}-{end - 1}/{len(BLOB)}"
    assert answer.headers["content-length"] == str(end - start)


@pytest.mark.parametrize(
    ("spec", "status", "code"),
    [
        ("bytes=10240-", 416, "range_not_satisfiable"),
        ("bytes=99999-100000", 416, "range_not_satisfiable"),
        ("bytes=20-10", 400, "invalid_range"),
        ("items=0-10", 400, "invalid_range"),
        ("bytes=", 400, "invalid_range"),
        ("bytes=x-y", 400, "invalid_range"),
    ],
)
async def test_a_bad_range_is_refused_in_the_error_shape(
    kind: Kind, spec: str, status: int, code: str
) -> None:
    await put(kind.media, "1/video", BLOB)
    async with served(kind.media) as client:
        answer = await client.get("/1/video", headers={"Range": spec})
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    if status == 416:
        assert answer.headers["content-range"] == f"bytes */{len(BLOB)}"


async def test_a_missing_key_has_no_answer(kind: Kind) -> None:
    assert await kind.media.response("404/video", "video/mp4", "clip.mp4") is None


async def test_an_aborted_write_leaves_nothing(kind: Kind) -> None:
    big = os.urandom(20 * 1024 * 1024)  # past one multipart part, so parts were uploaded
    writer = kind.media.writer("2/video")
    for at in range(0, len(big), 1 << 20):
        await writer.write(big[at : at + (1 << 20)])
    await writer.abort()
    small = kind.media.writer("3/video")
    await small.write(b"x" * 100)
    await small.abort()
    assert await kind.media.response("2/video", "video/mp4", "clip.mp4") is None
    assert await kind.media.response("3/video", "video/mp4", "clip.mp4") is None
    assert kind.stored() == []
    assert kind.leftovers() == []


async def test_a_file_is_invisible_until_committed(kind: Kind) -> None:
    writer = kind.media.writer("4/video")
    await writer.write(BLOB)
    assert await kind.media.response("4/video", "video/mp4", "clip.mp4") is None
    await writer.commit()
    assert await kind.media.response("4/video", "video/mp4", "clip.mp4") is not None


async def test_a_second_commit_replaces_the_first(kind: Kind) -> None:
    await put(kind.media, "5/video", b"first attempt, torn" * 10)
    await put(kind.media, "5/video", BLOB)
    async with served(kind.media) as client:
        assert (await client.get("/5/video")).content == BLOB


def chunks(count: int, size: int) -> Iterator[bytes]:
    """`count` distinct chunks, made one at a time (the test itself never holds the file)."""
    seed = os.urandom(size)
    for n in range(count):
        yield n.to_bytes(8, "big") + seed[8:]


async def test_a_large_file_streams_in_and_out_without_being_held_whole(kind: Kind) -> None:
    count, size = 64, 1 << 20  # 64 MiB, in the 1 MiB pieces a download hands over
    expected = hashlib.sha256()
    tracemalloc.start()
    try:
        writer = kind.media.writer("6/video")
        for chunk in chunks(count, size):
            expected.update(chunk)
            await writer.write(chunk)
        await writer.commit()
        _, peak_in = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        total = 0
        async with served(kind.media) as client, client.stream("GET", "/6/video") as answer:
            assert answer.status_code == 200
            async for piece in answer.aiter_bytes():
                got.update(piece)
                total += len(piece)
        _, peak_out = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == count * size
    assert got.hexdigest() == expected.hexdigest()
    # Held at most a few upload parts (S3) or one chunk (a directory): far from the 64 MiB.
    assert peak_in < 40 * size, f"writing held {peak_in / size:.1f} MiB"
    assert peak_out < 16 * size, f"serving held {peak_out / size:.1f} MiB"


async def test_delete_removes_the_file_and_a_missing_key_is_no_error(kind: Kind) -> None:
    await put(kind.media, "7/video", BLOB)
    await put(kind.media, "7/last_frame", BLOB[:10])
    await kind.media.delete("7/video")
    await kind.media.delete("7/video")
    await kind.media.delete("never/written")
    assert await kind.media.response("7/video", "video/mp4", "clip.mp4") is None
    assert await kind.media.response("7/last_frame", "image/png", "f.png") is not None


async def test_keys_are_paths_under_the_store(kind: Kind) -> None:
    await put(kind.media, "8/video", BLOB)
    names = kind.stored()
    if isinstance(kind.media, S3Media):
        assert names == [f"{PREFIX}/8/video"]
    else:
        assert names == ["8/video"]


@pytest.mark.parametrize("key", ["../escape", "8/../../x", "/abs/video"])
async def test_a_key_outside_the_store_is_refused(kind: Kind, key: str) -> None:
    with pytest.raises(ValueError):
        kind.media.writer(key)


# -- RECEIVER_MEDIA_URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "directory", "bucket", "prefix"),
    [
        ({}, "media", None, None),
        ({"RECEIVER_MEDIA_DIR": "files"}, "files", None, None),
        ({"RECEIVER_MEDIA_URL": "files/kept"}, "files/kept", None, None),
        ({"RECEIVER_MEDIA_URL": "file:///srv/media%20files"}, "/srv/media files", None, None),
        ({"RECEIVER_MEDIA_URL": "s3://results/receiver/prod/"}, None, "results", "receiver/prod"),
        ({"RECEIVER_MEDIA_URL": "s3://results"}, None, "results", ""),
    ],
)
def test_media_url_names_a_directory_or_a_bucket(
    env: dict[str, str], directory: str | None, bucket: str | None, prefix: str | None
) -> None:
    from receiver.settings import Settings

    settings = Settings.from_env(env)
    if bucket is None:
        assert settings.media_s3 is None and settings.media_path() == directory
    else:
        assert settings.media_s3 is not None
        assert (settings.media_s3.bucket, settings.media_s3.prefix) == (bucket, prefix)


def test_the_aws_variables_reach_the_bucket_and_the_secret_stays_out_of_reprs() -> None:
    from receiver.settings import Settings

    settings = Settings.from_env(
        {
            "RECEIVER_MEDIA_URL": "s3://results/p",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AWS_DEFAULT_REGION": "eu-west-3",
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "very-secret-value",
        }
    )
    s3 = settings.media_s3
    assert s3 is not None
    assert s3.endpoint_url == "http://127.0.0.1:9000"
    assert (s3.region, s3.access_key_id) == ("eu-west-3", "AKIAEXAMPLE")
    assert "very-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RECEIVER_MEDIA_URL": "ftp://host/x"}, "RECEIVER_MEDIA_URL"),
        ({"RECEIVER_MEDIA_URL": "s3://Bad_Bucket/x"}, "RECEIVER_MEDIA_URL"),
        ({"RECEIVER_MEDIA_URL": "s3://ok-bucket/../x"}, "RECEIVER_MEDIA_URL"),
        ({"RECEIVER_MEDIA_URL": "file://elsewhere/x"}, "RECEIVER_MEDIA_URL"),
        ({"RECEIVER_MEDIA_URL": "a", "RECEIVER_MEDIA_DIR": "b"}, "RECEIVER_MEDIA_URL"),
        ({"RECEIVER_MEDIA_URL": "s3://ok-bucket", "AWS_ENDPOINT_URL": "localhost:9000"}, "AWS_ENDPOINT_URL"),
        ({"RECEIVER_MEDIA_URL": "s3://ok-bucket", "AWS_REGION": "Mars 1"}, "AWS_REGION"),
        ({"RECEIVER_MEDIA_URL": "s3://ok-bucket", "AWS_ACCESS_KEY_ID": "AKIA"}, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_a_bad_media_setting_names_its_variable(env: dict[str, str], named: str) -> None:
    from receiver.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_serve_stops_with_one_line_when_the_bucket_cannot_be_reached(
    s3_endpoint: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "AWS_"))}
    env.update(s3_env(s3_endpoint, "no-such-bucket-" + os.urandom(4).hex()))
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RECEIVER_MEDIA_URL" in lines[0], done.stderr
