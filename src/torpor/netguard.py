"""Which network addresses torpor may connect to on a caller's say-so (webhooks).

Pure: no resolution, no sockets. Callers resolve a host themselves and pass the addresses
in; only globally routable unicast addresses pass. Refusals carry a short reason
("loopback", "private", ...) that is safe to show a caller: never an address or a port.
IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are
judged by the IPv4 address they carry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import urlsplit

IPAddress = IPv4Address | IPv6Address

LOOPBACK = "loopback"
PRIVATE = "private"
LINK_LOCAL = "link-local"
MULTICAST = "multicast"
RESERVED = "reserved"
UNSPECIFIED = "unspecified"
SHARED = "shared address space"
INVALID = "invalid address"
NO_ADDRESS = "no address"

_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/32", UNSPECIFIED),
        ("0.0.0.0/8", RESERVED),  # "this network"
        ("127.0.0.0/8", LOOPBACK),
        ("10.0.0.0/8", PRIVATE),
        ("172.16.0.0/12", PRIVATE),
        ("192.168.0.0/16", PRIVATE),
        ("100.64.0.0/10", SHARED),  # carrier-grade NAT
        ("169.254.0.0/16", LINK_LOCAL),  # cloud metadata services live here
        ("224.0.0.0/4", MULTICAST),
        ("240.0.0.0/4", RESERVED),  # includes the broadcast address
        ("192.0.0.0/24", RESERVED),  # IETF protocol assignments
        ("192.0.2.0/24", RESERVED),  # documentation
        ("198.51.100.0/24", RESERVED),  # documentation
        ("203.0.113.0/24", RESERVED),  # documentation
        ("198.18.0.0/15", RESERVED),  # benchmarking
        ("192.88.99.0/24", RESERVED),  # deprecated 6to4 relay anycast
    )
)

_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), reason)
    for net, reason in (
        ("::/128", UNSPECIFIED),
        ("::1/128", LOOPBACK),
        ("64:ff9b:1::/48", PRIVATE),  # local-use NAT64
        ("fc00::/7", PRIVATE),  # unique local
        ("fec0::/10", PRIVATE),  # deprecated site-local
        ("fe80::/10", LINK_LOCAL),
        ("ff00::/8", MULTICAST),
        ("100::/64", RESERVED),  # discard-only
        ("2001::/23", RESERVED),  # IETF protocol assignments, Teredo included
        ("2001:db8::/32", RESERVED),  # documentation
        ("3fff::/20", RESERVED),  # documentation
    )
)

_V4_MAPPED = IPv6Network("::ffff:0:0/96")
_V4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = IPv6Network("2000::/3")


def as_address(value: IPAddress | str) -> IPAddress | None:
    """The address a string names (an IPv6 zone such as `%eth0` is kept), or None."""
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    try:
        return ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def address_refusal(value: IPAddress | str) -> str | None:
    """None when the address may be connected to, else the short reason it may not."""
    addr = as_address(value)
    if addr is None:
        return INVALID
    if isinstance(addr, IPv4Address):
        return _v4_refusal(addr)
    return _v6_refusal(addr)


def addresses_refusal(values: Iterable[IPAddress | str]) -> str | None:
    """None when every address may be connected to (and there is at least one), else the
    reason of the first one refused."""
    seen = False
    for value in values:
        seen = True
        reason = address_refusal(value)
        if reason is not None:
            return reason
    return None if seen else NO_ADDRESS


def _v4_refusal(addr: IPv4Address) -> str | None:
    for net, reason in _V4:
        if addr in net:
            return reason
    return None if addr.is_global else RESERVED


def _v6_refusal(addr: IPv6Address) -> str | None:
    # Compare without the zone: `fe80::1%eth0` is still link-local.
    bare = IPv6Address(int(addr))
    for net, reason in _V6:
        if bare in net:
            return reason
    embedded = _embedded_v4(bare)
    if embedded is not None:
        carried = _v4_refusal(embedded)
        if carried is not None:
            return carried
        # IPv4-compatible addresses are deprecated and not routable themselves.
        return RESERVED if bare in _V4_COMPATIBLE else None
    if bare not in _GLOBAL_UNICAST:
        return RESERVED
    return None


def _embedded_v4(addr: IPv6Address) -> IPv4Address | None:
    if addr in _V4_MAPPED or addr in _V4_COMPATIBLE or addr in _NAT64:
        return IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr.sixtofour  # 2002::/16 carries the IPv4 address in bits 16..48


# -- URLs ----------------------------------------------------------------------------------

SCHEMES = {"http": 80, "https": 443}
# Characters that parsers disagree on (a backslash read as a slash by one and not by
# another, whitespace, controls): a URL holding one is refused outright.
_AMBIGUOUS = frozenset("\\ \x7f") | frozenset(chr(c) for c in range(32))


@dataclass(frozen=True)
class Target:
    """Where a URL connects: the host as written (no brackets), the port, and the address
    when the host is an IP literal (then no lookup is needed)."""

    host: str
    port: int
    literal: IPAddress | None


@dataclass(frozen=True)
class Refused:
    reason: str


def url_target(url: str) -> Target | Refused:
    """The target of an http(s) URL with a host and no user information, or why not."""
    if any(ch in _AMBIGUOUS for ch in url):
        return Refused("invalid URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Refused("invalid URL")
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        return Refused("must be an http or https URL")
    host = parts.hostname
    if not host:
        return Refused("a host is required")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        return Refused("user information is not allowed")
    # A host that is not a valid IP literal is a name, to be resolved (`2130706433` and
    # `127.1` are names here; resolving them yields addresses that are then checked).
    literal = as_address(host)
    if literal is None and ":" in host:
        return Refused("invalid URL")
    return Target(host=host, port=port if port is not None else SCHEMES[scheme], literal=literal)
