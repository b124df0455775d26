"""The one rule for where we may send (pure): subscriber URLs, client callback URLs, result files.

It is applied twice with the same functions: when a URL is accepted (`check_url`, on the host as
written, in every spelling a resolver accepts) and when a connection is made (`address_allowed`,
on each address the name resolves to, so DNS rebinding cannot reach inside).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from receiver.errors import OutboundURLError

__all__ = [
    "Address",
    "Network",
    "OutboundURLError",
    "address_allowed",
    "check_url",
    "host_address",
    "in_allow",
    "redact_url",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL = 2048
# Each scheme we may send to, with its TLS twin: the plain one only inside RECEIVER_OUTBOUND_ALLOW.
_TLS = {"http": "https", "amqp": "amqps", "nats": "tls", "redis": "rediss"}
_BROKERS = frozenset({"amqp", "amqps", "nats", "tls", "redis", "rediss"})
# Dotted numbers in any base, 1 to 4 parts: what inet_aton (and so getaddrinfo) reads as IPv4.
_NUMERIC = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}", re.ASCII)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def host_address(host: str) -> Address | None:
    """The address a host names by itself (an IP in any spelling, or a loopback name), or None
    for a DNS name. OutboundURLError for a host no resolver should be asked about."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.rstrip(".")
    if not name:
        raise OutboundURLError("the URL names no host", code="invalid_url")
    if name == "localhost" or name.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if _NUMERIC.fullmatch(name):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            raise OutboundURLError(f"{host!r} is not a valid address", code="invalid_url") from None
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise OutboundURLError(f"{host!r} is not a valid host name", code="invalid_url") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise OutboundURLError(f"{host!r} is not a valid host name", code="invalid_url")
    if labels[-1].isdigit():
        raise OutboundURLError(f"{host!r} is not a valid host name", code="invalid_url")
    return None


def _embedded(address: ipaddress.IPv6Address) -> list[Address]:
    inner: list[Address] = []
    if address.sixtofour is not None:
        inner.append(address.sixtofour)
    if address.teredo is not None:
        inner.extend(address.teredo)
    if address in _NAT64:
        inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return inner


def address_allowed(address: Address | str, allow: Iterable[Network]) -> bool:
    """True when we may connect to `address`: inside `allow`, or global (not private, loopback,
    link-local, CGNAT, reserved, multicast), looking through IPv6 forms that embed IPv4."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    networks = tuple(allow)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in networks):
        return True
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(address_allowed(inner, networks) for inner in _embedded(address))
    return True


def in_allow(address: Address | str, allow: Iterable[Network]) -> bool:
    """True when `address` is inside RECEIVER_OUTBOUND_ALLOW (where plain http may go)."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allow)


def redact_url(url: str) -> str:
    """`url` with the password in its user part shown as `***` (how every read shows a broker URL)."""
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def check_url(url: object, allow: Iterable[Network], *, brokers: bool = False) -> str:
    """`url` if we may send to it, else OutboundURLError: https (plain http only inside
    `allow`), no credentials, and a host that is not private or loopback in any spelling. With
    `brokers`, also a message broker's URL (amqps, tls, rediss; amqp, nats, redis only inside
    `allow`), which may carry credentials."""
    networks = tuple(allow)
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise OutboundURLError(f"must be a URL string of at most {MAX_URL} characters", code="invalid_url")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise OutboundURLError("must not contain spaces or control characters", code="invalid_url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise OutboundURLError("is not a valid URL", code="invalid_url") from None
    schemes = ("https", "http", *_BROKERS) if brokers else ("https", "http")
    if parts.scheme not in schemes or not host:
        wanted = "an https URL or a broker URL (amqps, tls, rediss)" if brokers else "an https URL"
        raise OutboundURLError(f"must be {wanted}", code="invalid_url")
    if parts.scheme not in _BROKERS and (parts.username is not None or parts.password is not None):
        raise OutboundURLError("must not carry credentials", code="invalid_url")
    address = host_address(host)
    if parts.scheme in _TLS and (address is None or not in_allow(address, networks)):
        raise OutboundURLError(
            f"must be {_TLS[parts.scheme]} (plain {parts.scheme} only inside RECEIVER_OUTBOUND_ALLOW)",
            code="invalid_url",
        )
    if address is not None and not address_allowed(address, networks):
        raise OutboundURLError("points at a private, loopback or reserved address")
    return url
