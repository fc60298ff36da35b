"""The SDK's AlertingSystem.configure_channel, as the seed used it."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from notifier.client import AlertingSystem, NotificationChannel
from qesmon.errors import ChannelError
from qesmon.settings import Settings
from tests.notifier.conftest import Receiver, rows


async def test_configure_channel_validates_stores_and_masks(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    receiver: Receiver,
) -> None:
    alerting = AlertingSystem(
        database_url=nsettings.database_url, outbound_allow=nsettings.channels.outbound_allow
    )
    masked = alerting.configure_channel(
        NotificationChannel.SLACK, {"webhook_url": receiver.url + "/services/T/B/zzzzzz"}
    )
    assert masked["config"]["webhook_url"] == f"http://127.0.0.1:{receiver.port}/***"
    assert await rows(pool, "SELECT channel, enabled FROM receivers") == [("slack", True)]
    result = await alerting.send_test(NotificationChannel.SLACK)
    assert result["ok"] is True and receiver.requests[0].path == "/services/T/B/zzzzzz"
    with pytest.raises(ChannelError, match="field 'webhook_url'"):
        AlertingSystem().configure_channel(NotificationChannel.DISCORD, {})
