"""The outbound guard (issue 15): channels reach only public addresses unless OUTBOUND_ALLOW
lists others, checked on the addresses really connected to, against real loopback servers.

The guard is on here (no allow-list, as in production) unless a test allows something; the
receivers listen on loopback, so every refused delivery would otherwise have arrived. The
same attempts through the real API are in ``tests/api/test_ssrf.py``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from psycopg_pool import AsyncConnectionPool

from notifier import outbound
from notifier.channels import REGISTRY, Message, SendEnv
from notifier.clock import FakeClock
from notifier.templating import Renderer
from qesmon.addresses import AllowList, refusal
from qesmon.errors import ConfigError, DeliveryError
from qesmon.settings import Settings
from tests.notifier.conftest import (
    Answer,
    Receiver,
    configure,
    push,
    rows,
    running,
    transition,
    wait_for,
    write_policy,
)
from tests.notifier.test_channels import alert
from tests.support.settings import replace_settings

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "fe80::1%lo": "link-local",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "100.64.0.1": "carrier-grade NAT",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "255.255.255.255": "reserved (not public)",
    "240.0.0.1": "reserved (not public)",
    "192.0.2.1": "reserved (not public)",
    "198.18.0.1": "reserved (not public)",
    "2001:db8::1": "reserved (not public)",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:169.254.169.254": "link-local",
    "::ffff:10.0.0.1": "private",
    "2002:7f00:1::": "6to4 of loopback",
    "2002:a01:203::": "6to4 of private",
    "64:ff9b::7f00:1": "reserved (not public)",
    "::127.0.0.1": "reserved (not public)",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "why"), sorted(REFUSED.items()))
def test_every_non_public_address_is_refused_with_its_kind(address: str, why: str) -> None:
    assert refusal(address, 443) == why


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address, 443) is None


@pytest.mark.parametrize("text", ["2130706433", "0177.0.0.1", "127.1", "0x7f.0.0.1", "127.0.0.1."])
def test_anything_but_a_plain_ip_address_is_refused_at_the_socket(text: str) -> None:
    assert refusal(text, 80) == "not a plain IP address"


def test_the_allow_list_lets_exactly_the_listed_addresses_and_ports_through() -> None:
    allow = AllowList.parse(" 127.0.0.1:8025, 10.20.0.0/16,[::1]:8080, fd00::/8 ,[fe80::/10]:25")
    assert str(allow) == "127.0.0.1:8025,10.20.0.0/16,[::1]:8080,fd00::/8,[fe80::/10]:25"
    assert AllowList.parse(str(allow)) == allow
    assert refusal("127.0.0.1", 8025, allow) is None
    assert refusal("::ffff:127.0.0.1", 8025, allow) is None  # judged as the IPv4 address
    assert refusal("127.0.0.1", 8026, allow) == "loopback"
    assert refusal("127.0.0.2", 8025, allow) == "loopback"
    assert refusal("10.20.255.1", 1, allow) is None
    assert refusal("10.21.0.1", 1, allow) == "private"
    assert refusal("::1", 8080, allow) is None
    assert refusal("::1", 8025, allow) == "loopback"
    assert refusal("fd00::7", 9, allow) is None
    assert refusal("fe80::1%lo", 25, allow) is None
    assert refusal("fe80::1", 26, allow) == "link-local"
    assert refusal("169.254.169.254", 80, allow) == "link-local"


@pytest.mark.parametrize(
    "raw",
    [
        "localhost",
        "hooks.internal:443",
        "10.0.0.1/8",  # host bits: 10.0.0.0/8 or 10.0.0.1 was meant
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "127.0.0.1:８０",
        "[::1",
        "[::1]8080",
        "::ffff:127.0.0.1",
        "127.0.0.1:80:81",
        "*",
    ],
)
def test_a_bad_allow_list_entry_stops_the_start_naming_the_variable_and_the_entry(
    raw: str,
) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"OUTBOUND_ALLOW": f"8.8.8.8, {raw}"})
    assert str(err.value).startswith("OUTBOUND_ALLOW=") and repr(raw) in str(err.value)


def test_the_allow_list_is_read_from_the_environment_and_logged_as_given() -> None:
    settings = Settings.from_env({"OUTBOUND_ALLOW": "127.0.0.1:8025,10.0.0.0/8"})
    assert settings.channels.outbound_allow == AllowList.parse(" 127.0.0.1:8025 , 10.0.0.0/8,")
    assert settings.describe()["channels"]["outbound_allow"] == settings.channels.outbound_allow
    assert str(settings.channels.outbound_allow) == "127.0.0.1:8025,10.0.0.0/8"
    assert Settings.from_env({}).channels.outbound_allow is None


# -- HTTP channels through the guarded session ---------------------------------------------


def env(http: aiohttp.ClientSession) -> SendEnv:
    return SendEnv(http, Renderer(), FakeClock(1_700_000_000.0), {})


def hook(url: str) -> Any:
    cls = REGISTRY["webhook"]
    return cls(cls.validate({"url": url}))


@pytest.fixture
async def guarded() -> AsyncIterator[aiohttp.ClientSession]:
    """A channel session with the guard on and nothing allowed (production's default)."""
    async with outbound.session(None) as http:
        yield http


class Receiver6:
    """A receiver on ::1 that records the paths it gets."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(text="ok")


@pytest.fixture
async def receiver6() -> AsyncIterator[Receiver6]:
    r = Receiver6()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", r.handle)
    async with TestServer(app, host="::1") as server:
        assert server.port is not None
        r.port = server.port
        yield r


async def refused(url: str, http: aiohttp.ClientSession) -> DeliveryError:
    with pytest.raises(DeliveryError) as err:
        await hook(url).send(Message("firing", [alert()], ["k"]), env(http))
    assert err.value.retryable is False and err.value.status is None, err.value
    return err.value


async def test_loopback_receivers_are_refused_by_address_and_by_name(
    receiver: Receiver, receiver6: Receiver6, guarded: aiohttp.ClientSession
) -> None:
    port, port6 = receiver.port, receiver6.port
    for url, why in (
        (f"http://127.0.0.1:{port}/", "address 127.0.0.1 is loopback"),
        (f"http://[::ffff:127.0.0.1]:{port}/", "address ::ffff:7f00:1 is loopback"),
        (f"http://[::ffff:7f00:1]:{port}/", "address ::ffff:7f00:1 is loopback"),
        (f"http://[::1]:{port6}/", "address ::1 is loopback"),
        # names: /etc/hosts, and the numeric forms getaddrinfo (not aiohttp) understands
        (f"http://localhost:{port}/", "host 'localhost' resolves to an address that is loopback"),
        (f"http://LocalHost:{port}/", "host 'localhost' resolves to an address that is loopback"),
        (f"http://0x7f.0.0.1:{port}/", "host '0x7f.0.0.1' resolves to an address that is loop"),
        (f"http://0x7f000001:{port}/", "host '0x7f000001' resolves to an address that is loop"),
    ):
        err = await refused(url, guarded)
        assert str(err).startswith(f"webhook: {why}"), (url, str(err))
        assert str(err).endswith("unless OUTBOUND_ALLOW lists them")
    # the answer never says where a name resolves to (the notifier's log does)
    assert "127.0.0.1" not in str(await refused(f"http://localhost:{port}/", guarded))
    assert receiver.requests == [] and receiver6.paths == []


async def test_metadata_and_private_addresses_are_refused_before_any_connection(
    guarded: aiohttp.ClientSession,
) -> None:
    # nothing listens there: without the guard these would be timeouts or unreachable
    # networks (retryable), not an immediate refusal
    for url, why in (
        ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is link-local"),
        ("http://10.1.2.3:8080/", "address 10.1.2.3 is private"),
        ("https://192.168.0.1/", "address 192.168.0.1 is private"),
        ("http://100.64.0.1/", "address 100.64.0.1 is carrier-grade NAT"),
        ("http://[fd00::1]/", "address fd00::1 is private"),
        ("http://0.0.0.0:9/", "address 0.0.0.0 is unspecified"),
        ("http://[::ffff:a9fe:a9fe]/", "address ::ffff:a9fe:a9fe is link-local"),
    ):
        assert str(await refused(url, guarded)).startswith(f"webhook: {why}"), url


async def test_legacy_numeric_forms_never_reach_loopback(
    receiver: Receiver, guarded: aiohttp.ClientSession
) -> None:
    # aiohttp refuses them outright (a socket would map them onto 127.0.0.1)
    for host in ("2130706433", "0177.0.0.1", "127.1", "0177.1"):
        err = await refused(f"http://{host}:{receiver.port}/", guarded)
        assert str(err) == "webhook: the URL's host is not valid", host
    assert receiver.requests == []


class StaticDNS(AbstractResolver):
    """A DNS that answers what the test says (the seam aiohttp resolves names through)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


async def test_a_public_name_whose_dns_answers_loopback_or_private_is_refused(
    receiver: Receiver,
) -> None:
    dns = StaticDNS(
        {
            "hooks.example.com": ["127.0.0.1"],
            "mixed.example.com": ["93.184.215.14", "10.0.0.7"],  # one bad answer is enough
            "mapped.example.com": ["::ffff:127.0.0.1"],
        }
    )
    async with outbound.session(None, resolver=dns) as http:
        for name, why in (
            ("hooks.example.com", "loopback"),
            ("mixed.example.com", "private"),
            ("mapped.example.com", "loopback"),
        ):
            err = await refused(f"http://{name}:{receiver.port}/", http)
            assert str(err).startswith(
                f"webhook: host {name!r} resolves to an address that is {why};"
            )
    assert dns.asked == ["hooks.example.com", "mixed.example.com", "mapped.example.com"]
    assert receiver.requests == []
    # allowed, the same name reaches the receiver: what was refused was the answer
    allow = AllowList.parse(f"127.0.0.1:{receiver.port}")
    async with outbound.session(allow, resolver=dns) as http:
        await hook(f"http://hooks.example.com:{receiver.port}/x").send(
            Message("firing", [alert()], ["k"]), env(http)
        )
    assert [r.path for r in receiver.requests] == ["/x"]


async def test_the_allow_list_lets_exactly_the_listed_address_and_port_through(
    receiver: Receiver,
) -> None:
    other = Receiver()
    await other.start()
    try:
        allow = AllowList.parse(f"127.0.0.1:{receiver.port}")
        async with outbound.session(allow) as http:
            message = Message("firing", [alert()], ["k"])
            await hook(f"http://127.0.0.1:{receiver.port}/a").send(message, env(http))
            await hook(f"http://localhost:{receiver.port}/b").send(message, env(http))
            await refused(f"http://127.0.0.1:{other.port}/", http)
            await refused(f"http://localhost:{other.port}/", http)
            await refused(f"http://[::1]:{receiver.port}/", http)
        assert [r.path for r in receiver.requests] == ["/a", "/b"]
        assert other.requests == []
    finally:
        await other.stop()


async def test_a_redirect_to_loopback_is_not_followed(receiver: Receiver) -> None:
    target = Receiver()
    await target.start()
    try:
        receiver.default = Answer(302, headers={"Location": f"{target.url}/internal"})
        async with outbound.session(AllowList.parse(f"127.0.0.1:{receiver.port}")) as http:
            # a channel does not follow redirects: a 3xx is a failed delivery
            with pytest.raises(DeliveryError) as err:
                await hook(receiver.url).send(Message("firing", [alert()], ["k"]), env(http))
            assert str(err.value) == "webhook: HTTP 302 Found" and not err.value.retryable
            # and were a redirect followed, its connection would be refused
            with pytest.raises(aiohttp.ClientConnectorError) as followed:
                await http.get(receiver.url)
            assert "address 127.0.0.1 is loopback" in str(outbound.refused(followed.value))
        assert len(receiver.requests) == 2 and target.requests == []
    finally:
        await target.stop()


async def test_every_http_channel_posts_only_through_the_guard(
    receiver: Receiver, guarded: aiohttp.ClientSession
) -> None:
    configs = {
        "slack": {"webhook_url": receiver.url + "/services/T/B/x"},
        "discord": {"webhook_url": receiver.url + "/api/webhooks/1/x"},
        "webhook": {"url": receiver.url},
        "sms": {
            "account_sid": "AC123",
            "auth_token": "t0k3n-abcdef",
            "from": "+15005550006",
            "to": ["+4915112345678"],
            "api_url": receiver.url,
        },
        "pagerduty": {"routing_key": "r" * 32, "events_url": receiver.url},
        "alertmanager": {"url": receiver.url},
    }
    assert set(configs) == set(REGISTRY) - {"email"}
    for name, config in configs.items():
        cls = REGISTRY[name]
        channel = cls(cls.validate(config))
        with pytest.raises(DeliveryError) as err:
            await channel.send(Message("firing", [alert()], ["k"]), env(guarded))
        assert "address 127.0.0.1 is loopback" in str(err.value), name
        assert not err.value.retryable
    assert receiver.requests == []
    async with aiohttp.ClientSession() as unguarded:
        with pytest.raises(TypeError, match="no guard"):
            await hook(receiver.url).send(Message("firing", [alert()], ["k"]), env(unguarded))
    assert receiver.requests == []


async def test_an_answer_is_summarised_not_repeated(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    banner = b"Apache/2.4.1 (internal build 10.0.0.7) <secret>"
    for status, text in (
        (500, "webhook: HTTP 500 Internal Server Error"),
        (404, "webhook: HTTP 404 Not Found"),
        (599, "webhook: HTTP 599"),
    ):
        receiver.default = Answer(status, body=banner)
        with pytest.raises(DeliveryError) as err:
            await hook(receiver.url).send(Message("firing", [alert()], ["k"]), env(session))
        assert str(err.value) == text
    slack = REGISTRY["slack"]({"webhook_url": receiver.url})
    receiver.default = Answer(200, body=banner)
    with pytest.raises(DeliveryError) as err:
        await slack.send(Message("firing", [alert()], ["k"]), env(session))
    assert str(err.value) == "slack: HTTP 200 without Slack's 'ok' answer"


# -- SMTP ----------------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 Message accepted"


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[Inbox, int, str]]:
    """An SMTP server on 127.0.0.1 with STARTTLS whose certificate names only ``localhost``."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_ctx, require_starttls=True
    )
    controller.start()
    try:
        yield inbox, port, str(ca_file)
    finally:
        controller.stop()


def mail(host: str, port: int, ca_file: str) -> Any:
    cls = REGISTRY["email"]
    config = {
        "smtp_host": host,
        "smtp_port": port,
        "from": "alerts@qes.example",
        "to": ["oncall@qes.example"],
        "ca_file": ca_file,
    }
    return cls(cls.validate(config))


async def test_an_smtp_host_on_loopback_is_refused_by_address_and_by_name(
    smtp: tuple[Inbox, int, str], guarded: aiohttp.ClientSession
) -> None:
    inbox, port, ca_file = smtp
    for host, why in (
        ("127.0.0.1", "address 127.0.0.1 is loopback"),
        ("localhost", "host 'localhost' resolves to an address that is loopback"),
        ("::ffff:127.0.0.1", "address ::ffff:127.0.0.1 is loopback"),
        ("0x7f000001", "host '0x7f000001' resolves to an address that is loopback"),
        ("169.254.169.254", "address 169.254.169.254 is link-local"),
        ("10.1.2.3", "address 10.1.2.3 is private"),
    ):
        with pytest.raises(DeliveryError) as err:
            await mail(host, port, ca_file).send(Message("firing", [alert()], ["k"]), env(guarded))
        assert str(err.value).startswith(f"email: {why}"), host
        assert err.value.retryable is False
    assert inbox.messages == []


async def test_an_allowed_smtp_host_is_reached_at_its_checked_address_and_verified_by_name(
    smtp: tuple[Inbox, int, str],
) -> None:
    inbox, port, ca_file = smtp
    async with outbound.session(AllowList.parse(f"127.0.0.1:{port}")) as http:
        # connected to 127.0.0.1, the certificate checked for the name that was configured
        await mail("localhost", port, ca_file).send(Message("firing", [alert()], ["k"]), env(http))
        assert len(inbox.messages) == 1
        # the same server by its address: the certificate does not name 127.0.0.1
        with pytest.raises(DeliveryError) as err:
            await mail("127.0.0.1", port, ca_file).send(
                Message("firing", [alert()], ["k"]), env(http)
            )
        assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in str(err.value)
    assert len(inbox.messages) == 1


# -- the notifier delivering from its outbox -----------------------------------------------

WEBHOOK_ONLY = """
routing:
  defaults: {channels: [webhook], group_wait: 0s, repeat_interval: 0s, group_by: [fingerprint]}
"""


async def test_the_notifier_fails_a_delivery_to_loopback_once_and_never_retries_it(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
    aredis: redis.asyncio.Redis,
) -> None:
    guarded_settings = replace_settings(nsettings, channels=dict(outbound_allow=None))
    write_policy(guarded_settings, WEBHOOK_ONLY)
    await configure(pool, "webhook", {"url": receiver.url + "/hook"})
    async with running(guarded_settings):
        await push(aredis, guarded_settings, transition("fp-ssrf"))

        async def closed() -> bool:
            got = await rows(pool, "SELECT status FROM notifier_outbox")
            return got == [("failed",)]

        await wait_for(closed, what="the delivery failed")
    ((status, attempts, error),) = await rows(
        pool, "SELECT status, attempts, last_error FROM notifier_outbox"
    )
    assert (status, attempts) == ("failed", 1)
    assert error.startswith("webhook: address 127.0.0.1 is loopback;")
    recorded = await rows(pool, "SELECT status, http_status, error FROM deliveries")
    assert recorded == [("failed", None, error)]
    assert receiver.requests == []
