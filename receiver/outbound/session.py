"""The HTTP client for calls to outside URLs (subscribers, result files): the address rule of
receiver.outbound.addresses applied to every new connection, at send time."""

from __future__ import annotations

import asyncio
import socket
import ssl
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from receiver.errors import BlockedAddress
from receiver.outbound.addresses import Network, OutboundURLError, address_allowed, host_address, in_allow

__all__ = ["GuardedResolver", "outbound_session", "vet_destination"]


class GuardedResolver(AbstractResolver):
    """Resolves each new connection's host and refuses it unless every address is allowed, at
    send time, so a DNS answer that changes after subscribing (rebinding) cannot reach inside.
    aiohttp connects to the addresses this returns, with the URL's host name for TLS."""

    def __init__(self, allow: tuple[Network, ...]) -> None:
        self._allow = allow
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not results or not all(address_allowed(r["host"], self._allow) for r in results):
            raise BlockedAddress(f"{host} resolves to a private, loopback or link-local address")
        return results

    async def close(self) -> None:
        await self._inner.close()


async def vet_destination(url: str, allow: tuple[Network, ...]) -> None:
    """What GuardedResolver cannot judge: a literal address (aiohttp skips the resolver for those;
    the same rule applies), and plain http only inside RECEIVER_OUTBOUND_ALLOW. Fan-out sends and
    result-file downloads both call it before connecting; BlockedAddress otherwise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        literal = host_address(host)
    except OutboundURLError as exc:
        raise BlockedAddress(str(exc)) from None
    if literal is not None and not address_allowed(literal, allow):
        raise BlockedAddress(f"{host} is a private, loopback or reserved address")
    if parts.scheme != "https":
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 80)
        if not infos or not all(in_allow(str(i[4][0]), allow) for i in infos):
            raise BlockedAddress("plain http is allowed only inside RECEIVER_OUTBOUND_ALLOW")


def outbound_session(allow: tuple[Network, ...], connections: int) -> aiohttp.ClientSession:
    """The fan-out's HTTP client: aiohttp (one httpx client tops out near 1k POST/s at 64 in
    flight, encode/httpx#3215), resolving through GuardedResolver on every new connection. It
    sets no timeout of its own: each send runs under its budget (receiver.outbound.call)."""
    connector = aiohttp.TCPConnector(
        limit=connections,
        resolver=GuardedResolver(allow),
        use_dns_cache=False,
        ssl=ssl.create_default_context(),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )
