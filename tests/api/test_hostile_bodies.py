"""API bodies with the worst bytes: a clear 400 naming the problem, never a 500 (a NUL in a
channel config used to reach PostgreSQL, which refused it)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.conftest import Keys, auth

P = "/api/v1/metrics"


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/record", b'{"name":"\xff","value":1}', "body: not valid JSON"),
        ("/record", b"\xff\xfe", "body: not valid JSON"),
        ("/record", b'{"name":"x","value":1,"labels":{"a":"\\u0000"}}', "control character"),
        (
            "/alerts/configure",
            b'{"channel":"webhook","config":{"url":"https://x.example/\\u0000"}}',
            "field 'url': contains a control character",
        ),
        (
            "/alerts/configure",
            b'{"channel":"webhook","config":{"url":"https://x.example/",'
            b'"headers":{"X-A":"a\\u0000b"}}}',
            "field 'headers.X-A': contains a control character",
        ),
        (
            "/alerts/configure",
            b'{"channel":"slack","config":{"webhook_url":"https://hooks.slack.com/x",'
            b'"username":"a\\nb"}}',
            "field 'username': contains a control character",
        ),
        (
            "/alerts/configure",
            b'{"channel":"email","config":{"smtp_host":"mail\\u0000x","from":"a@b.example",'
            b'"to":["c@d.example"]}}',
            "field 'smtp_host': contains a control character",
        ),
    ],
)
async def test_hostile_bodies_are_400_naming_the_problem(
    client: TestClient[Any, Any], keys: Keys, path: str, body: bytes, words: str
) -> None:
    resp = await client.post(
        P + path, data=body, headers={**auth(keys.admin), "Content-Type": "application/json"}
    )
    assert resp.status == 400, await resp.text()
    assert words in (await resp.json())["error"]["message"]
