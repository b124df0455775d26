"""httpx client for the provider's video API: create and retrieve, each call under one budget
(receiver.outbound.call), errors mapped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from receiver.errors import ProviderError
from receiver.outbound.call import (
    ACCEPT_ENCODING,
    BadEncoding,
    Budget,
    CallTimeout,
    TooLarge,
    parse_retry_after,
)
from receiver.rules import jsonpolicy
from receiver.rules.ids import valid_video_id
from receiver.rules.redact import strip_callbacks, strip_text

__all__ = ["Provider", "ProviderError"]

_MAX_ANSWER = 4 * 1024 * 1024


def _provider_message(status: int, content: bytes) -> str:
    """The provider's own error message, without our callback URL (it may quote it back)."""
    try:
        body = jsonpolicy.loads(content)
    except jsonpolicy.JSONPolicyError:
        return f"provider answered {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        if isinstance(message, str) and message:
            return strip_text(message)[:500]
    return f"provider answered {status}"


async def _read(budget: Budget, response: httpx.Response) -> bytes:
    if response.is_stream_consumed:
        # A transport may hand over an answer it has already read and decoded (httpx's
        # MockTransport does): nothing is left to stream, only the cap to hold.
        return await budget.body(_whole(response.content)).read()
    return await budget.body(response.aiter_raw(), response.headers.get("content-encoding")).read()


async def _whole(content: bytes) -> AsyncIterator[bytes]:
    yield content


@dataclass
class Provider:
    """The provider at base_url (we call {base_url}/v1/videos)."""

    http: httpx.AsyncClient
    base_url: str
    api_key: str | None = None
    timeout: float = 30.0

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> dict[str, Any]:
        budget = Budget(deadline=self.timeout, cap=_MAX_ANSWER)
        request = self.http.build_request(
            method,
            f"{self.base_url}{path}",
            json=json,
            headers={**self._headers(), "accept-encoding": ACCEPT_ENCODING},
            # The budget's deadline is the only one: httpx's own would restart on every read.
            timeout=None,
        )
        status: int | None = None
        try:
            async with budget.bound():
                response = await budget.head(self.http.send(request, stream=True, follow_redirects=False))
                status = response.status_code
                try:
                    content = await _read(budget, response)
                finally:
                    await response.aclose()
        except CallTimeout:
            raise ProviderError("provider timed out", timeout=True) from None
        except TooLarge:
            raise ProviderError("provider answer too large", status=status) from None
        except BadEncoding as exc:
            raise ProviderError(f"provider answer cannot be read ({exc})", status=status) from None
        except httpx.ConnectError as exc:
            # No connection, so the request never reached the provider: it cannot have acted on it.
            raise ProviderError(f"provider unreachable ({type(exc).__name__})", sent=False) from None
        except httpx.TimeoutException:
            raise ProviderError("provider timed out", timeout=True) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider unreachable ({type(exc).__name__})") from None
        if response.status_code != 200 and not 200 <= response.status_code < 300:
            raise ProviderError(
                _provider_message(response.status_code, content),
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        try:
            body = jsonpolicy.loads(content)
        except jsonpolicy.JSONPolicyError as exc:
            raise ProviderError(
                f"provider answered with something that is not acceptable JSON ({exc})",
                status=response.status_code,
            ) from None
        if not isinstance(body, dict) or not valid_video_id(body.get("id")):
            raise ProviderError("provider answer is not a video object", status=response.status_code)
        # Everything the provider says passes here: our callback URL stops at the door.
        stripped: dict[str, Any] = strip_callbacks(body)
        return stripped

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/v1/videos", body)

    async def retrieve(self, video_id: str) -> dict[str, Any]:
        from urllib.parse import quote

        return await self._call("GET", f"/v1/videos/{quote(video_id, safe='')}")
