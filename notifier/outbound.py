"""The outbound guard: every channel connection, HTTP or SMTP, is checked at connect time.

A channel config names a host; an API caller who may configure a receiver could point it at
the machine's loopback services, the cloud metadata service or the internal network and read
what comes back. So no channel connects to an address that :func:`qesmon.addresses.refusal`
refuses (loopback, link-local, private, carrier-grade NAT, multicast, unspecified, reserved,
IPv4-mapped forms of these) unless ``OUTBOUND_ALLOW`` lists it. The check is made on the
addresses a connection is really made to, not on the URL's text, so a name that resolves to
loopback, or is made to (DNS rebinding), is refused as well:

- HTTP: every channel posts through a session from :func:`session`, whose connector checks
  every address a host name resolves to (:class:`GuardedResolver`: one refused address refuses
  the name) and, as the last word, the numeric address each socket is about to connect to
  (aiohttp's ``socket_factory``), which also covers IP literals (aiohttp does not resolve them).
  Channels do not follow redirects (a 3xx answer is a failed delivery).
- SMTP: :meth:`OutboundGuard.connect` resolves the host, checks every address and returns a
  socket connected to a checked one; TLS still verifies the server against the host name.

A refusal is :class:`OutboundRefused`, which channels turn into a delivery error that is not
retried. It names the kind of address but, for a host name, not the address (the notifier's
log has it), so a receiver's configuration does not map the internal DNS for its author::

    http = outbound.session(settings.channels.outbound_allow)   # every HTTP channel's session
    sock = await outbound.guard_of(http).connect("smtp.example.com", 587)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from qesmon.addresses import AllowList, refusal
from qesmon.errors import QesmonError

log = logging.getLogger(__name__)


class OutboundRefused(QesmonError, OSError):
    """A channel connection to an address that is not public and not allow-listed.

    An ``OSError`` too, so that it travels through aiohttp's connector (and the SMTP connect)
    the way a connection failure does; :func:`refused` finds it again on the other side.
    """


class OutboundGuard:
    """Decides, address by address, whether a channel may connect (see the module docstring).

    ::

        guard = OutboundGuard(AllowList.parse("127.0.0.1:8025"))
        guard.check("127.0.0.1", 8025)          # allowed
        guard.check("10.1.2.3", 443)            # OutboundRefused: private
    """

    def __init__(self, allow: AllowList | None = None) -> None:
        self.allow = allow

    def check(self, address: str, port: int, host: str | None = None) -> None:
        """Raise OutboundRefused unless a channel may connect to ``address`` on ``port``
        (``host``: the name it was resolved from, when it was one)."""
        why = refusal(address, port, self.allow)
        if why is None:
            return
        log.warning(
            "outbound connection refused: %s port %d%s is %s (OUTBOUND_ALLOW)",
            address,
            port,
            f" of host {host!r}" if host else "",
            why,
        )
        if host is None or _is_ip(host):
            subject = f"address {host or address} is {why}"
        else:
            subject = f"host {host[:100]!r} resolves to an address that is {why}"
        raise OutboundRefused(
            f"{subject}; channels reach only public addresses unless OUTBOUND_ALLOW lists them"
        )

    def socket_factory(self, addr_info: aiohttp.AddrInfoType) -> socket.socket:
        """aiohttp's ``socket_factory``: the check on the address a socket will connect to."""
        family, kind, proto, _, sockaddr = addr_info
        self.check(str(sockaddr[0]), int(sockaddr[1]))
        return socket.socket(family, kind, proto)

    async def connect(
        self, host: str, port: int, resolver: AbstractResolver | None = None
    ) -> socket.socket:
        """A socket connected to ``host``:``port``, once every address of ``host`` passed the
        check (for SMTP); OutboundRefused, or the OSError of the last address tried."""
        checked = GuardedResolver(self, resolver or DefaultResolver())
        hosts = await checked.resolve(host, port, socket.AF_UNSPEC)
        loop = asyncio.get_running_loop()
        failure: OSError = OSError(f"{host!r} has no address")
        for found in hosts:
            sockaddr: tuple[Any, ...] = (found["host"], found["port"])
            if found["family"] == socket.AF_INET6:
                sockaddr += (0, 0)
            sock = self.socket_factory(
                (found["family"], socket.SOCK_STREAM, found["proto"], "", sockaddr)
            )
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, sockaddr)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            except BaseException:  # cancelled (a timeout)
                sock.close()
                raise
            return sock
        raise failure


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host name when any address of it is refused."""

    def __init__(self, guard: OutboundGuard, inner: AbstractResolver) -> None:
        self.guard = guard
        self.inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        hosts = await self.inner.resolve(host, port, family)
        for found in hosts:
            self.guard.check(found["host"], found["port"], host)
        return hosts

    async def close(self) -> None:
        await self.inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that connects only where its :class:`OutboundGuard` allows."""

    def __init__(
        self, guard: OutboundGuard, *, resolver: AbstractResolver | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            resolver=GuardedResolver(guard, resolver or DefaultResolver()),
            socket_factory=guard.socket_factory,
            **kwargs,
        )
        self.guard = guard


def session(
    allow: AllowList | None, *, resolver: AbstractResolver | None = None, **kwargs: Any
) -> aiohttp.ClientSession:
    """The HTTP session channels send through: connections checked by an OutboundGuard with
    ``allow`` (``resolver``: another DNS resolver; ``kwargs`` go to ClientSession)."""
    return aiohttp.ClientSession(
        connector=GuardedConnector(OutboundGuard(allow), resolver=resolver), **kwargs
    )


def guard_of(http: aiohttp.ClientSession) -> OutboundGuard:
    """The guard of a session from :func:`session`; TypeError for any other session, so a
    channel never sends through an unguarded one."""
    connector = http.connector
    if isinstance(connector, GuardedConnector):
        return connector.guard
    raise TypeError("channels send through notifier.outbound.session(): this one has no guard")


def refused(exc: BaseException) -> OutboundRefused | None:
    """The OutboundRefused behind ``exc`` (aiohttp wraps it in a ClientConnectorError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OutboundRefused):
            return seen
        seen = seen.__cause__
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
