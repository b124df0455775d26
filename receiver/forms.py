"""multipart/form-data bodies, bounded, as the nested fields a JSON body would have carried."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from receiver.errors import InvalidRequest
from receiver.http import read_body

__all__ = ["MAX_FIELDS", "MAX_NESTING", "is_multipart", "nest", "read_form"]

MAX_FIELDS = 256  # parts in one form
MAX_FILES = 4  # file parts are refused, but parsed (up to this many) to name them in the 400
MAX_NESTING = 8  # brackets in one field name: a[b][c]...
_NAME = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")


def is_multipart(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


def _top(name: str) -> str:
    """The top-level field of a form name: `metadata` of `metadata[key]`."""
    match = _NAME.match(name)
    return match.group(1) if match else name


def _bad(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=_top(name), code="invalid_multipart")


def nest(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Form fields named as the OpenAI SDK names them (`metadata[key]`, `input_references[]`)
    as nested objects and lists; a plain name is a text value. A name given twice, or used both
    as text and as an object, is a 400 naming it."""
    result: dict[str, Any] = {}
    for name, value in items:
        match = _NAME.fullmatch(name)
        if match is None:
            raise _bad(name, f"form field name {name[:80]!r} is not understood")
        keys = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        if len(keys) > MAX_NESTING:
            raise _bad(name, f"form field {keys[0]} is nested too deeply")
        if "" in keys[:-1]:
            raise _bad(name, f"form field {keys[0]}: [] may only end a field name")
        node = result
        for key in keys[:-2] if keys[-1] == "" else keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise _bad(name, f"form field {keys[0]} is given both as a value and as an object")
            node = child
        if keys[-1] == "":
            parent = keys[-2]
            values = node.setdefault(parent, [])
            if not isinstance(values, list):
                raise _bad(name, f"form field {keys[0]} is given both as a value and as a list")
            values.append(value)
        else:
            if keys[-1] in node:
                raise _bad(name, f"form field {name[:80]} is given more than once")
            node[keys[-1]] = value
    return result


async def read_form(request: Request, cap: int) -> dict[str, Any]:
    """The form's text fields, nested; the whole body capped at `cap` bytes. File parts get a
    400 naming them: the provider takes references by URL (input_references), not uploads."""
    body = await read_body(request, cap)
    parser = MultiPartParser(
        request.headers, _once(body), max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=cap
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "files" in exc.message:
            raise InvalidRequest(
                "file uploads are not supported; pass reference images by URL in input_references",
                code="file_not_supported",
            ) from None
        raise InvalidRequest(
            f"the multipart body cannot be read: {exc.message}", code="invalid_multipart"
        ) from None
    try:
        items = form.multi_items()
        for name, value in items:
            if isinstance(value, UploadFile):
                raise InvalidRequest(
                    f"{name} is a file upload, which the receiver cannot pass on to the provider; "
                    "pass reference images by URL in input_references",
                    param=_top(name),
                    code="file_not_supported",
                )
        return nest((name, value) for name, value in items if isinstance(value, str))
    finally:
        await form.close()
