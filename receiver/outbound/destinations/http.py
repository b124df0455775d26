"""HTTP destination: a signed POST; confirmed by a 2xx."""

from __future__ import annotations

import asyncio

import aiohttp

from receiver.outbound.addresses import Network
from receiver.outbound.call import Budget, parse_retry_after
from receiver.outbound.destinations.base import BlockedAddress, Message, Outcome
from receiver.outbound.session import vet_destination

__all__ = ["ANSWER_CAP", "HttpDestination"]

ANSWER_CAP = 64 * 1024  # bytes of a subscriber's answer we read at most


class HttpDestination:
    """POSTs through the shared aiohttp session (its GuardedResolver vets every connection)."""

    def __init__(self, url: str, session: aiohttp.ClientSession, allow: tuple[Network, ...], deadline: float):
        self._url = url
        self._session = session
        self._allow = allow
        self._deadline = deadline

    async def publish(self, message: Message) -> Outcome:
        headers = {
            "content-type": "application/json",
            "user-agent": "receiver-webhooks/1",
            **message.headers(),
        }
        budget = Budget(deadline=self._deadline, cap=ANSWER_CAP)
        try:
            async with budget.bound():
                await vet_destination(self._url, self._allow)
                async with self._session.post(
                    self._url, data=message.body, headers=headers, allow_redirects=False
                ) as response:
                    # Only the status counts; a glance at the answer, never the whole of a huge one.
                    await budget.body(response.content.iter_chunked(ANSWER_CAP)).prefix()
                    status = response.status
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
        except BlockedAddress as exc:
            return Outcome(False, error=str(exc), reached=False)
        except TimeoutError:
            return Outcome(False, error="timed out")
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, BlockedAddress) else exc
            return Outcome(False, error=f"{type(cause).__name__}: {cause}"[:300], reached=cause is exc)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:300])
        return Outcome(200 <= status < 300, status=status, retry_after=retry_after)

    async def publish_many(self, messages: list[Message]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.publish(m) for m in messages)))

    async def close(self) -> None:
        """The session is shared and closed by its owner."""
