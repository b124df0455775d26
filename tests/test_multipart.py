"""POST /v1/videos as multipart/form-data: the same fields, checks and answers as JSON."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.errors import InvalidRequest
from receiver.routes.forms import nest
from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory

pytestmark = pytest.mark.anyio

SLOW = SimConfig(secret=SECRET, duration_median=3600)


def form(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """httpx multipart arguments that force multipart/form-data even with no file."""
    return {"files": [(name, (None, value)) for name, value in fields]}


async def test_a_form_submit_is_the_json_submit(make_stack: StackFactory) -> None:
    async with make_stack(SLOW) as stack:
        fields = [
            ("model", "seedance-2.0"),
            ("prompt", "a red fox"),
            ("duration", "5"),
            ("watermark", "false"),
            ("resolution", "720p"),
            ("metadata[order]", "42"),
            ("metadata[nested][deep]", "x"),
            ("input_references[]", "https://example.com/a.png"),
            ("input_references[]", "https://example.com/b.png"),
        ]
        answer = await stack.client.post(
            f"{stack.url}/v1/videos", headers={"Idempotency-Key": "same"}, **form(fields)
        )
        assert answer.status_code == 200, answer.text
        video = answer.json()
        assert video["object"] == "video" and video["prompt"] == "a red fox"
        sent = stack.simulator.tasks[video["id"]].body
        assert sent["duration"] == 5 and sent["watermark"] is False
        assert sent["metadata"] == {"order": "42", "nested": {"deep": "x"}}
        assert sent["input_references"] == ["https://example.com/a.png", "https://example.com/b.png"]
        # The same request as JSON under the same key is the same request: the first task.
        again = await stack.submit(
            {
                "model": "seedance-2.0",
                "prompt": "a red fox",
                "duration": 5,
                "watermark": False,
                "resolution": "720p",
                "metadata": {"order": "42", "nested": {"deep": "x"}},
                "input_references": ["https://example.com/a.png", "https://example.com/b.png"],
            },
            headers={"Idempotency-Key": "same"},
        )
        assert again.status_code == 200 and again.json()["id"] == video["id"]
        assert again.headers["idempotent-replayed"] == "true"


BAD_FORMS: list[tuple[list[tuple[str, str]], str | None, str]] = [
    ([("prompt", "p")], "model", "missing_field"),
    ([("model", "m"), ("prompt", "p"), ("duration", "5.5")], "duration", "invalid_request"),
    ([("model", "m"), ("prompt", "p"), ("duration", "\u0665")], "duration", "invalid_request"),
    ([("model", "m"), ("prompt", "p"), ("watermark", "1")], "watermark", "invalid_request"),
    ([("model", "m"), ("prompt", "p"), ("resolution", "8K")], "resolution", "invalid_request"),
    ([("model", "m"), ("prompt", "p"), ("metadata", "{}")], "metadata", "invalid_request"),
    ([("model", "m"), ("prompt", "p"), ("seconds", "4")], "seconds", "unknown_parameter"),
    ([("model", "m"), ("model", "n"), ("prompt", "p")], "model", "invalid_multipart"),
    (
        [("model", "m"), ("prompt", "p"), ("metadata[a]", "1"), ("metadata", "x")],
        "metadata",
        "invalid_multipart",
    ),
    ([("model", "m"), ("prompt", "p"), ("x" + "[a]" * 9, "1")], "x", "invalid_multipart"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_FORMS)
async def test_bad_forms_get_the_json_answers(
    make_stack: StackFactory, fields: list[tuple[str, str]], param: str | None, code: str
) -> None:
    async with make_stack(SLOW) as stack:
        answer = await stack.client.post(f"{stack.url}/v1/videos", **form(fields))
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["param"], error["code"]) == (param, code)
        assert not stack.simulator.tasks


async def test_file_parts_are_refused_by_name(make_stack: StackFactory) -> None:
    async with make_stack(SLOW) as stack:
        answer = await stack.client.post(
            f"{stack.url}/v1/videos",
            data={"model": "m", "prompt": "p"},
            files={"input_reference": ("ref.png", b"\x89PNG...", "image/png")},
        )
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == ("file_not_supported", "input_reference")
        assert "input_references" in error["message"]
        many = await stack.client.post(
            f"{stack.url}/v1/videos",
            data={"model": "m", "prompt": "p"},
            files=[("f", (f"{i}.png", b"x", "image/png")) for i in range(10)],
        )
        assert many.status_code == 400 and many.json()["error"]["code"] == "file_not_supported"
        assert not stack.simulator.tasks


async def test_form_sizes_are_bounded(make_stack: StackFactory) -> None:
    async with make_stack(SLOW, max_body_bytes=4096) as stack:
        big = await stack.client.post(
            f"{stack.url}/v1/videos", **form([("model", "m"), ("prompt", "p" * 5000)])
        )
        assert big.status_code == 413
        many = await stack.client.post(
            f"{stack.url}/v1/videos",
            **form([("model", "m"), ("prompt", "p")] + [(f"m[{i}]", "") for i in range(300)]),
        )
        assert many.status_code in (400, 413) and not stack.simulator.tasks
        garbled = await stack.client.post(
            f"{stack.url}/v1/videos",
            content=b"--b\r\nnonsense",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert garbled.status_code == 400, garbled.text
        no_boundary = await stack.client.post(
            f"{stack.url}/v1/videos", content=b"x", headers={"content-type": "multipart/form-data"}
        )
        assert no_boundary.status_code == 400, no_boundary.text


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([("a", "1")], {"a": "1"}),
        ([("a[]", "1"), ("a[]", "2")], {"a": ["1", "2"]}),
        ([("m[x]", "1"), ("m[y][z]", "2")], {"m": {"x": "1", "y": {"z": "2"}}}),
        ([("a", "1"), ("a", "2")], "a"),
        ([("a[]", "1"), ("a", "2")], "a"),
        ([("a", "1"), ("a[b]", "2")], "a"),
        ([("a[][b]", "1")], "a"),
        ([("[x]", "1")], "[x]"),
    ],
)
def test_nest(items: list[tuple[str, str]], expected: Any) -> None:
    if isinstance(expected, dict):
        assert nest(items) == expected
        return
    with pytest.raises(InvalidRequest) as caught:
        nest(items)
    assert caught.value.param == expected


def raw_form(parts: list[tuple[bytes, bytes, bytes]], boundary: bytes = b"xyzzy") -> bytes:
    """A multipart body built byte by byte: (name, extra part headers, value) each, so a test
    can send what no well-behaved client library would encode."""
    out = b""
    for name, headers, value in parts:
        out += b"--" + boundary + b"\r\n"
        out += (
            b'Content-Disposition: form-data; name="' + name + b'"\r\n' + headers + b"\r\n" + value + b"\r\n"
        )
    return out + b"--" + boundary + b"--\r\n"


# Each is a 400 before the provider is called or anything is written; on PostgreSQL the first
# was a paid task whose write then failed (503) because text cannot hold U+0000.
BAD_TEXT: list[tuple[str, list[tuple[bytes, bytes, bytes]], str | None]] = [
    ("nul", [(b"model", b"", b"m"), (b"prompt", b"", b"a fox\x00")], "prompt"),
    ("not-utf8", [(b"model", b"", b"m"), (b"prompt", b"", b"caf\xe9")], "prompt"),
    ("lone-surrogate", [(b"model", b"", b"m"), (b"prompt", b"", b"a \xed\xa0\x80 fox")], "prompt"),
    (
        "nested-nul",
        [(b"model", b"", b"m"), (b"prompt", b"", b"p"), (b"metadata[k]", b"", b"\x00")],
        "metadata",
    ),
    (
        "latin-1-part",
        [(b"model", b"", b"m"), (b"prompt", b"Content-Type: text/plain; charset=latin-1\r\n", b"caf\xe9")],
        "prompt",
    ),
    ("nul-in-name", [(b"model", b"", b"m"), (b"prompt", b"", b"p"), (b"meta\x00data[k]", b"", b"v")], None),
]


@pytest.mark.parametrize(("case", "parts", "param"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
async def test_text_parts_are_held_to_the_json_string_rules(
    make_stack: StackFactory,
    database_url: str,
    case: str,
    parts: list[tuple[bytes, bytes, bytes]],
    param: str | None,
) -> None:
    async with make_stack(SLOW, database_url=database_url) as stack:
        answer = await stack.client.post(
            f"{stack.url}/v1/videos",
            content=raw_form(parts),
            headers={"content-type": "multipart/form-data; boundary=xyzzy"},
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_multipart", param), case
        assert not stack.simulator.tasks  # the provider was never asked (nor paid)
        listed = await stack.client.get(f"{stack.url}/v1/videos")
        assert listed.status_code == 200 and listed.json()["data"] == []
        ready = await stack.client.get(f"{stack.url}/readyz")
        assert ready.status_code == 200, ready.text
        # The same form, clean and in UTF-8 (declared or not), is taken.
        good = await stack.client.post(
            f"{stack.url}/v1/videos",
            content=raw_form(
                [
                    (b"model", b"", b"m"),
                    (b"prompt", b"Content-Type: text/plain; charset=UTF-8\r\n", "café".encode()),
                ]
            ),
            headers={"content-type": "multipart/form-data; boundary=xyzzy"},
        )
        assert good.status_code == 200, good.text
        assert good.json()["prompt"] == "café"


async def test_a_body_declaring_another_charset_is_refused(make_stack: StackFactory) -> None:
    async with make_stack(SLOW) as stack:
        answer = await stack.client.post(
            f"{stack.url}/v1/videos",
            content=raw_form([(b"model", b"", b"m"), (b"prompt", b"", b"caf\xe9")]),
            headers={"content-type": "multipart/form-data; boundary=xyzzy; charset=iso-8859-1"},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_multipart"
        assert not stack.simulator.tasks
