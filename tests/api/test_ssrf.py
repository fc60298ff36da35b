"""SSRF through channel configs against the real API (issue 15): an admin configures a
receiver on loopback, link-local, private or a name resolving to loopback and asks
``/alerts/test`` to call it; the outbound guard refuses each at connect time, redirects are not
followed, and what a receiver answers is summarised, never repeated.

The API runs with production's default (``OUTBOUND_ALLOW`` unset) unless a test allows one
receiver's port; every receiver listens on loopback, so each refusal stands for a request that
would otherwise have arrived.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller

from api.app import create_app
from qesmon.addresses import AllowList
from qesmon.settings import Settings
from tests.api.conftest import Keys, auth
from tests.notifier.conftest import Answer, Receiver
from tests.support.settings import replace_settings

P = "/api/v1/metrics/alerts"

Client = TestClient[Any, Any]
MakeClient = Callable[[AllowList | None], Awaitable[Client]]


@pytest.fixture
async def api(aiohttp_client: Any, settings: Settings) -> MakeClient:
    """The API with ``OUTBOUND_ALLOW`` as given (None: unset, as in production)."""

    async def make(allow: AllowList | None) -> Client:
        app = create_app(
            replace_settings(settings, channels=dict(outbound_allow=allow)), monitor=False
        )
        client: Client = await aiohttp_client(app)
        return client

    return make


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    """Two recording HTTP servers on 127.0.0.1."""
    pair = (Receiver(), Receiver())
    for r in pair:
        await r.start()
    yield pair
    for r in pair:
        await r.stop()


async def configure(client: Client, keys: Keys, channel: str, config: dict[str, Any]) -> None:
    body = {"channel": channel, "enabled": True, "config": config}
    resp = await client.post(f"{P}/configure", headers=auth(keys.admin), json=body)
    assert resp.status == 200, await resp.text()


async def send_test(client: Client, keys: Keys, channel: str = "webhook") -> dict[str, Any]:
    resp = await client.post(f"{P}/test", params={"channel": channel}, headers=auth(keys.admin))
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_receivers_on_loopback_metadata_and_private_addresses_are_refused(
    api: MakeClient, keys: Keys, receivers: tuple[Receiver, Receiver]
) -> None:
    client = await api(None)
    receiver = receivers[0]
    port = receiver.port
    got6: list[str] = []

    async def record(request: web.Request) -> web.Response:
        got6.append(request.path)
        return web.Response(text="ok")

    app6 = web.Application()
    app6.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(app6, host="::1") as server6:
        attempts = {
            f"http://127.0.0.1:{port}/hook": "address 127.0.0.1 is loopback",
            f"http://[::1]:{server6.port}/hook": "address ::1 is loopback",
            f"http://localhost:{port}/hook": "host 'localhost' resolves to an address that is",
            f"http://[::ffff:127.0.0.1]:{port}/": "address ::ffff:7f00:1 is loopback",
            f"http://0x7f.0.0.1:{port}/": "host '0x7f.0.0.1' resolves to an address that is",
            "http://169.254.169.254/latest/meta-data/iam/": "address 169.254.169.254 is link",
            "http://[::ffff:169.254.169.254]/": "address ::ffff:a9fe:a9fe is link-local",
            "http://10.1.2.3:8080/": "address 10.1.2.3 is private",
            "http://100.64.0.1/": "address 100.64.0.1 is carrier-grade NAT",
            "http://[fd00::1]/": "address fd00::1 is private",
            f"http://2130706433:{port}/": "the URL's host is not valid",
            f"http://0177.0.0.1:{port}/": "the URL's host is not valid",
        }
        for url, why in attempts.items():
            await configure(client, keys, "webhook", {"url": url})
            result = await send_test(client, keys)
            assert result["ok"] is False and result["status"] is None, url
            assert result["error"].startswith(f"webhook: {why}"), (url, result["error"])
    assert receiver.requests == [] and got6 == []
    # the answer names the kind of address, never where a name resolves to
    await configure(client, keys, "webhook", {"url": f"http://localhost:{port}/"})
    assert "127.0.0.1" not in (await send_test(client, keys))["error"]


async def test_a_redirect_to_loopback_is_not_followed(
    api: MakeClient, keys: Keys, receivers: tuple[Receiver, Receiver]
) -> None:
    public, internal = receivers
    # the allowed receiver stands for a public host that answers with a redirect inward
    client = await api(AllowList.parse(f"127.0.0.1:{public.port}"))
    public.default = Answer(302, headers={"Location": f"{internal.url}/admin"})
    await configure(client, keys, "webhook", {"url": public.url + "/hook"})
    result = await send_test(client, keys)
    assert result["ok"] is False and result["status"] == 302
    assert result["error"] == "webhook: HTTP 302 Found"
    assert [r.path for r in public.requests] == ["/hook"] and internal.requests == []


async def test_the_allow_list_lets_exactly_the_listed_receiver_through_and_answers_are_not_echoed(
    api: MakeClient, keys: Keys, receivers: tuple[Receiver, Receiver]
) -> None:
    listed, other = receivers
    client = await api(AllowList.parse(f"127.0.0.1:{listed.port}"))
    for url in (listed.url + "/a", f"http://localhost:{listed.port}/b"):
        await configure(client, keys, "webhook", {"url": url})
        assert (await send_test(client, keys))["ok"] is True
    await configure(client, keys, "webhook", {"url": other.url})
    refused = await send_test(client, keys)
    assert refused["error"].startswith("webhook: address 127.0.0.1 is loopback")
    assert [r.path for r in listed.requests] == ["/a", "/b"] and other.requests == []
    # what the receiver says stays with it: the caller gets the status and its standard reason
    banner = "nginx/1.25 at 10.0.0.7: db=postgres://app@10.0.0.9/prod <!-- token -->"
    listed.default = Answer(500, body=banner.encode())
    await configure(client, keys, "webhook", {"url": listed.url})
    resp = await client.post(f"{P}/test", params={"channel": "webhook"}, headers=auth(keys.admin))
    text = await resp.text()
    assert (await resp.json())["error"] == "webhook: HTTP 500 Internal Server Error"
    assert "10.0.0" not in text and "nginx" not in text and "token" not in text


class Sink:
    """An SMTP server's handler that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


async def test_an_smtp_host_on_loopback_is_refused(
    api: MakeClient, keys: Keys, smtp: tuple[Sink, int]
) -> None:
    sink, port = smtp
    client = await api(None)
    for host, why in (
        ("127.0.0.1", "address 127.0.0.1 is loopback"),
        ("localhost", "host 'localhost' resolves to an address that is loopback"),
        ("169.254.169.254", "address 169.254.169.254 is link-local"),
        ("10.1.2.3", "address 10.1.2.3 is private"),
    ):
        config = {
            "smtp_host": host,
            "smtp_port": port,
            "starttls": False,
            "from": "alerts@qes.example",
            "to": ["oncall@qes.example"],
        }
        await configure(client, keys, "email", config)
        result = await send_test(client, keys, "email")
        assert result["ok"] is False and result["error"].startswith(f"email: {why}"), host
    assert sink.messages == []
    # allowed, the same server gets the test message: the refusal was the guard's
    allowed = await api(AllowList.parse(f"127.0.0.1:{port}"))
    await configure(allowed, keys, "email", {**config, "smtp_host": "127.0.0.1"})
    assert (await send_test(allowed, keys, "email"))["ok"] is True
    assert len(sink.messages) == 1
