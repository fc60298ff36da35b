"""The error middleware is the one place domain errors become HTTP answers (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from api.app import error_middleware
from notifier.actions import InvalidChannelConfig
from notifier.store import UnknownAlert
from qesmon.errors import ChannelError


@pytest.mark.parametrize(
    ("error", "status", "code", "message"),
    [
        (UnknownAlert(5), 404, "not_found", "alert 5 does not exist"),
        (
            InvalidChannelConfig("slack: field 'webhook_url': not a URL"),
            400,
            "invalid_channel_config",
            "slack: field 'webhook_url': not a URL",
        ),
        (
            ChannelError("not configured", "sms"),
            400,
            "invalid_channel",
            "sms: not configured",
        ),
    ],
)
async def test_domain_errors_are_answered_by_the_middleware(
    aiohttp_client: Any, error: Exception, status: int, code: str, message: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == status
    assert await resp.json() == {"error": {"code": code, "message": message}}
