"""Exfiltration through channel configs against the real API (issue 15): ``${...}`` in a URL or
a header name is refused, a reference outside the prefix is refused, and an unset one fails the
test send with the very same message, so no answer tells which variables exist."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.api.conftest import Keys, auth

P = "/api/v1/metrics/alerts"


async def configure(client: TestClient[Any, Any], keys: Keys, config: dict[str, Any]) -> Any:
    body = {"channel": "webhook", "enabled": True, "config": config}
    return await client.post(f"{P}/configure", headers=auth(keys.admin), json=body)


async def test_a_reference_in_a_url_or_outside_the_prefix_is_refused(
    client: TestClient[Any, Any], keys: Keys
) -> None:
    for config, field in (
        ({"url": "https://evil.example/?p=${PGPASSWORD}"}, "'url'"),
        ({"url": "${QESMON_SECRET_HOOK}"}, "'url'"),
        ({"url": "https://evil.example", "headers": {"${PGPASSWORD}": "x"}}, "'headers'"),
        ({"url": "https://evil.example", "headers": {"X-T": "${PGPASSWORD}"}}, "'headers.X-T'"),
        ({"url": "https://evil.example", "headers": {"X-T": "${HOME}"}}, "'headers.X-T'"),
    ):
        resp = await configure(client, keys, config)
        assert resp.status == 400, config
        error = (await resp.json())["error"]
        assert error["code"] == "invalid_channel_config" and field in error["message"], config


async def test_an_unset_reference_fails_the_test_like_a_refused_one_and_a_set_one_is_sent(
    client: TestClient[Any, Any], keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    async with TestServer(receiver, host="127.0.0.1") as server:
        url = str(server.make_url("/hook"))
        refused = await configure(client, keys, {"url": url, "headers": {"X-T": "${HOME}"}})
        assert refused.status == 400
        refusal = (await refused.json())["error"]["message"]
        ref = "${QESMON_SECRET_API_TEST_TOKEN}"
        monkeypatch.delenv(ref[2:-1], raising=False)
        stored = await configure(client, keys, {"url": url, "headers": {"X-T": ref}})
        assert stored.status == 200, await stored.text()
        assert (await stored.json())["config"]["headers"] == {"X-T": ref}
        params = {"channel": "webhook"}
        unset = await (
            await client.post(f"{P}/test", params=params, headers=auth(keys.admin))
        ).json()
        assert unset["ok"] is False and unset["error"] == refusal
        assert received == []
        monkeypatch.setenv(ref[2:-1], "tok-abcdef")
        sent = await (
            await client.post(f"{P}/test", params=params, headers=auth(keys.admin))
        ).json()
    assert sent["ok"] is True and received[0]["X-T"] == "tok-abcdef"
    assert "tok-abcdef" not in repr(sent)
