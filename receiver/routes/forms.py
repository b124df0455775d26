"""multipart/form-data bodies, bounded, as the nested fields a JSON body would have carried."""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from receiver.errors import InvalidRequest
from receiver.routes.http import read_body
from receiver.rules import jsonpolicy

__all__ = ["MAX_FIELDS", "MAX_NESTING", "is_multipart", "nest", "parse_form", "read_form"]

MAX_FIELDS = 256  # parts in one form
MAX_NESTING = 8  # brackets in one field name: a[b][c]...
_NAME = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")


def is_multipart(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "multipart/form-data"


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


class _Part:
    __slots__ = ("data", "disposition", "type")

    def __init__(self) -> None:
        self.data = bytearray()
        self.disposition = b""
        self.type = b""


def _utf8_charset(options: dict[bytes, bytes]) -> bool:
    """Whether a content type's charset, if it names one, is UTF-8 (under any of its aliases)."""
    charset = options.get(b"charset")
    if charset is None:
        return True
    try:
        return codecs.lookup(charset.decode("latin-1")).name == "utf-8"
    except LookupError:
        return False


def _text(raw: bytes, name: str | None) -> str:
    """A part's name (`name` None) or value under the JSON body's string rules, else a 400."""
    try:
        return jsonpolicy.text(raw)
    except jsonpolicy.JSONPolicyError as exc:
        if name is None:
            raise InvalidRequest(f"a form field's name is refused: {exc}", code="invalid_multipart") from None
        raise _bad(name, f"form field {_top(name)[:80]!r} is refused: {exc}") from None


def _parts(content_type: str, body: bytes) -> list[_Part]:
    _, params = parse_options_header(content_type)
    if not _utf8_charset(params):
        raise InvalidRequest(
            "multipart text parts must be UTF-8; the body declares another charset", code="invalid_multipart"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest(
            "the multipart body cannot be read: it names no boundary", code="invalid_multipart"
        )
    parts: list[_Part] = []
    header = [b"", b""]

    def begin() -> None:
        if len(parts) >= MAX_FIELDS:
            raise InvalidRequest(f"a form holds at most {MAX_FIELDS} fields", code="invalid_multipart")
        parts.append(_Part())

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1].data += chunk[start:end]

    def field(chunk: bytes, start: int, end: int) -> None:
        header[0] += chunk[start:end]

    def value(chunk: bytes, start: int, end: int) -> None:
        header[1] += chunk[start:end]

    def header_end() -> None:
        name = header[0].strip().lower()
        if name == b"content-disposition":
            parts[-1].disposition = header[1]
        elif name == b"content-type":
            parts[-1].type = header[1]
        header[0] = header[1] = b""

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_part_data": data,
            "on_header_field": field,
            "on_header_value": value,
            "on_header_end": header_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise InvalidRequest(
            "the multipart body cannot be read: it is not valid multipart data", code="invalid_multipart"
        ) from None
    return parts


def parse_form(content_type: str, body: bytes) -> dict[str, Any]:
    """A multipart/form-data body's text fields, nested (pure). Text parts are held to the JSON
    body's string rules and must be UTF-8; file parts get a 400 naming them: the provider takes
    references by URL (input_references), not uploads."""
    items: list[tuple[str, str]] = []
    for part in _parts(content_type, body):
        _, options = parse_options_header(part.disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise InvalidRequest("a form part names no field", code="invalid_multipart")
        name = _text(raw_name, None)
        if b"filename" in options:
            raise InvalidRequest(
                f"{name[:80]} is a file upload, which the receiver cannot pass on to the provider; "
                "pass reference images by URL in input_references",
                param=_top(name),
                code="file_not_supported",
            )
        if part.type and not _utf8_charset(parse_options_header(part.type)[1]):
            raise _bad(name, f"form field {_top(name)[:80]!r} declares a charset other than UTF-8")
        items.append((name, _text(bytes(part.data), name)))
    return nest(items)


async def read_form(request: Request, cap: int) -> dict[str, Any]:
    """The form's text fields, nested (see parse_form); the whole body capped at `cap` bytes."""
    body = await read_body(request, cap)
    return parse_form(request.headers.get("content-type", ""), body)
