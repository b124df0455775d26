"""The destination interface: publish one signed event, say whether the far side confirmed it."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

from receiver.errors import BlockedAddress
from receiver.outbound.addresses import Network, OutboundURLError, address_allowed, host_address, in_allow

__all__ = ["BlockedAddress", "Destination", "Message", "Outcome", "scrub", "vet_host"]


@dataclass(frozen=True)
class Message:
    """One event, signed for one subscriber: the same id and body on every attempt."""

    id: str
    type: str
    body: bytes
    timestamp: str
    signature: str

    def headers(self) -> dict[str, str]:
        return {
            "webhook-id": self.id,
            "webhook-timestamp": self.timestamp,
            "webhook-signature": self.signature,
        }


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. `confirmed`: the far side took it (a 2xx, a publisher confirm,
    a stream's ack, an XADD reply). `status` is HTTP's only. `reached` is False when the attempt
    never left (a blocked address), which says nothing of the destination's load."""

    confirmed: bool
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    reached: bool = True


class Destination(Protocol):
    async def publish(self, message: Message) -> Outcome:
        """Send once under the destination's deadline; never raises for a failed attempt."""
        ...

    async def publish_many(self, messages: list[Message]) -> list[Outcome]:
        """Send each once, all under one deadline, their confirms awaited together: one outcome
        per message, in order; never raises for a failed attempt."""
        ...

    async def close(self) -> None: ...


# Plain scheme -> its TLS twin; the plain ones go only inside RECEIVER_OUTBOUND_ALLOW.
TLS_OF = {"http": "https", "amqp": "amqps", "nats": "tls", "redis": "rediss"}


def scrub(text: str, parts: SplitResult) -> str:
    """`text` (an error message) without the URL's password, whatever a client library put in it."""
    if parts.password:
        text = text.replace(parts.password, "***")
    return text[:300]


async def vet_host(url: str, allow: tuple[Network, ...], default_port: int) -> str:
    """Resolve the URL's host now (at connect time) and return an address to connect to, or
    BlockedAddress: every address it resolves to must pass the outbound rule, and a plain scheme
    must stay inside RECEIVER_OUTBOUND_ALLOW. Connecting to the vetted address (not the name)
    leaves no second lookup for a rebinding DNS answer to change."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        literal = host_address(host)
    except OutboundURLError as exc:
        raise BlockedAddress(str(exc)) from None
    if literal is not None:
        addresses = [str(literal)]
    else:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or default_port, type=socket.SOCK_STREAM
        )
        addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(address_allowed(a, allow) for a in addresses):
        raise BlockedAddress(f"{host} resolves to a private, loopback or reserved address")
    if parts.scheme in TLS_OF and not all(in_allow(a, allow) for a in addresses):
        raise BlockedAddress(f"plain {parts.scheme} is allowed only inside RECEIVER_OUTBOUND_ALLOW")
    return addresses[0]
