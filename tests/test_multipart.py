"""POST /v1/videos as multipart/form-data: the same fields, checks and answers as JSON."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.errors import InvalidRequest
from receiver.forms import nest
from receiver.simulator import SimConfig
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
