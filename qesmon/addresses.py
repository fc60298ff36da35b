"""Which network addresses the notification channels may reach (pure): public ones, and what
the operator lists in ``OUTBOUND_ALLOW``.

:func:`refusal` says why a connection to an address must not be made: loopback, link-local
(the cloud metadata service at 169.254.169.254 among them), private (RFC 1918, fc00::/7),
carrier-grade NAT (100.64.0.0/10), multicast, unspecified, and every other address that is not
globally reachable (reserved, documentation, benchmarking, broadcast, 6to4 wrapping any of
these) are refused unless the :class:`AllowList` names them. An IPv4-mapped IPv6 address
(``::ffff:127.0.0.1``) is judged, and matched against the list, as the IPv4 address it carries.
:mod:`notifier.outbound` applies this at connect time::

    allow = AllowList.parse("127.0.0.1:8025, 10.20.0.0/16, [fd00::5]:443")
    refusal("169.254.169.254", 80, allow)   # "link-local"
    refusal("10.20.1.7", 25, allow)         # None: listed
    refusal("127.0.0.1", 8080, allow)       # "loopback": only port 8025 is listed
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def plain(address: IPAddress) -> IPAddress:
    """``address`` with an IPv4-mapped IPv6 form (``::ffff:a.b.c.d``) turned into IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def kind(address: IPAddress) -> str | None:
    """What makes ``address`` not a public unicast address ("loopback", "link-local",
    "private", ...), or None when it is one."""
    address = plain(address)
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        inner = kind(address.sixtofour)
        if inner is not None:
            return f"6to4 of {inner}"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "carrier-grade NAT"
    if any(address in network for network in _PRIVATE):
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved (not public)"
    return None


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One ``OUTBOUND_ALLOW`` entry: an address or network, on one port or on every port."""

    network: IPNetwork
    port: int | None = None

    def matches(self, address: IPAddress, port: int) -> bool:
        return address in self.network and (self.port is None or self.port == port)

    def __str__(self) -> str:
        single = self.network.num_addresses == 1
        text = str(self.network.network_address) if single else self.network.with_prefixlen
        if self.network.version == 6 and self.port is not None:
            text = f"[{text}]"
        return text if self.port is None else f"{text}:{self.port}"


@dataclass(frozen=True, slots=True)
class AllowList:
    """Addresses and networks the channels may reach although they are not public.

    ``OUTBOUND_ALLOW`` is a comma-separated list of entries, each an address or a network in
    CIDR notation, optionally with a port (IPv6 in brackets when it has one)::

        127.0.0.1:8025    10.20.0.0/16    10.0.0.0/8:443    ::1    [::1]:8080    [fd00::/8]:443

    Host names are not accepted: a name can be made to resolve to anything (DNS rebinding).
    """

    entries: tuple[AllowEntry, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        """Read ``OUTBOUND_ALLOW``; ValueError naming the first entry that is not one."""
        return cls(tuple(_entry(part.strip()) for part in raw.split(",") if part.strip()))

    def allows(self, address: IPAddress, port: int) -> bool:
        address = plain(address)
        return any(entry.matches(address, port) for entry in self.entries)

    def __str__(self) -> str:
        return ",".join(str(entry) for entry in self.entries)


def refusal(address: str, port: int, allow: AllowList | None = None) -> str | None:
    """Why a channel must not connect to ``address`` (the numeric address a socket is about
    to connect to) on ``port``, or None when it may: public, or listed in ``allow``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not a plain IP address"
    if allow is not None and allow.allows(ip, port):
        return None
    return kind(ip)


def _entry(text: str) -> AllowEntry:
    body, port = text, None
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6 address or network]:port")
        body = inner
        if rest:
            port = _port(text, rest[1:])
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has at least two colons)
        body, _, port_text = text.partition(":")
        port = _port(text, port_text)
    try:
        network = ipaddress.ip_network(body)
    except ValueError as exc:
        raise ValueError(
            f"{text!r}: {exc} (expected an IP address or network; host names are not accepted)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(
        ipaddress.IPv6Network("::ffff:0:0/96")
    ):
        raise ValueError(f"{text!r}: write an IPv4-mapped address as the IPv4 address")
    return AllowEntry(network, port)


def _port(text: str, port: str) -> int:
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return int(port)
