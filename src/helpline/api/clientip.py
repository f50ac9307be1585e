"""Who is the client? The socket peer, unless that peer is one of our own proxies.

Common FastAPI limiters key on ``request.client.host``, which behind a load balancer is the balancer: every shopper
shares one bucket. Trusting ``X-Forwarded-For`` blindly is worse: anyone can send ``X-Forwarded-For: 1.2.3.4`` and
get a fresh bucket per request. So: only when the peer is in ``TRUSTED_PROXIES`` do we read the header, from the
right (entries appended by our proxies) leftwards, and take the first address that is not one of our proxies.
Everything left of that was written by the client and is ignored.

IPv6 clients are keyed per /64: one subscriber usually holds a whole /64 and can rotate through it freely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from starlette.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"
IPV6_PREFIX = 64


@lru_cache(maxsize=8)
def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 192.168.1.1, fd00::/8"`` -> networks; a bare address is a /32 or /128. Raises on junk."""
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            raise ValueError(f"TRUSTED_PROXIES: {item!r} is not an IP address or CIDR network") from error
    return tuple(networks)


@lru_cache(maxsize=4096)  # parsed twice per charged request; addresses repeat (immutable results, bounded memory)
def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443``."""
    value = text.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in proxies)


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every X-Forwarded-For entry, in order, across repeated headers (proxies may append a new header line)."""
    entries: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            entries += value.decode("latin-1").split(",")
    return entries


def resolve_client(peer: str | None, headers: Iterable[tuple[bytes, bytes]], proxies: Sequence[IPNetwork]) -> str:
    """The client's address (as text), following X-Forwarded-For only through trusted proxies.

    A peer without an IP address is a Unix socket, i.e. a proxy on this very host: trusted whenever any proxy is.
    """
    current = parse_address(peer) if peer else None
    if current is not None and (not proxies or not _trusted(current, proxies)):
        return str(current)
    if current is None and not proxies:
        return UNKNOWN
    for entry in reversed(_forwarded_for(headers)):
        hop = parse_address(entry)
        if hop is None:
            break  # a garbled hop: the last address a trusted proxy vouched for is the best we know
        current = hop
        if not _trusted(hop, proxies):
            break
    return str(current) if current is not None else UNKNOWN


def rate_key(address: str) -> str:
    """The limiter key for an address: IPv4 as is, IPv6 as its /64 network."""
    parsed = parse_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))
    return str(parsed) if parsed is not None else address


def client_key(scope: Scope, trusted_proxies: str) -> str:
    """The rate-limit key of the caller of this ASGI request, under the ``TRUSTED_PROXIES`` setting."""
    client = scope.get("client")
    peer = client[0] if client else None
    if not trusted_proxies:  # the peer alone decides (no header is read): the same peer, the same key
        return _peer_key(peer)
    return rate_key(resolve_client(peer, scope.get("headers", ()), parse_networks(trusted_proxies)))


@lru_cache(maxsize=4096)  # a fifth of the limiter's cost per request (callgrind); peers repeat, results are strings
def _peer_key(peer: str | None) -> str:
    return rate_key(resolve_client(peer, (), ()))
