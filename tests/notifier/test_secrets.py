"""``${NAME}`` references in channel configs: whole values only, prefixed names only, never in
URLs or header names, one complaint whatever is wrong (no oracle), masked everywhere."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from psycopg_pool import AsyncConnectionPool

from notifier import actions
from notifier.channels import REGISTRY
from notifier.secrets import invalid, mask_config, resolve, scrub
from qesmon.errors import ChannelError, ConfigError
from qesmon.settings import Settings
from tests.notifier.conftest import Receiver, configure
from tests.support.settings import replace_settings

PREFIX = "QESMON_SECRET_"
ENV = {"QESMON_SECRET_TW": "tok", "PGPASSWORD": "db-password"}
H = "https://h.example"


def test_only_a_whole_value_naming_a_prefixed_variable_is_resolved() -> None:
    assert resolve("${QESMON_SECRET_TW}", PREFIX, ENV) == "tok"
    # anything else is a literal, sent as written
    assert resolve("Bearer ${QESMON_SECRET_TW}", PREFIX, ENV) == "Bearer ${QESMON_SECRET_TW}"
    assert resolve("https://evil.example/?p=${PGPASSWORD}", PREFIX, ENV) == (
        "https://evil.example/?p=${PGPASSWORD}"
    )
    # a reference to a variable outside the prefix, or to one that is not set: nothing
    assert resolve("${PGPASSWORD}", PREFIX, ENV) is None
    assert resolve("${QESMON_SECRET_NOPE}", PREFIX, ENV) is None
    assert resolve("${QESMON_SECRET_}", PREFIX, {"QESMON_SECRET_": "x"}) is None
    assert resolve("${not a name}", PREFIX, ENV) is None


def sms(auth_token: Any) -> dict[str, Any]:
    return {
        "account_sid": "AC1",
        "auth_token": auth_token,
        "from": "+15005550006",
        "to": ["+4915112345678"],
    }


@pytest.mark.parametrize(
    "token",
    ["${PGPASSWORD}", "${QESMON_SECRET_}", "${QESMON_SECRET_TW", "${bad name}", 42, ["x"]],
)
def test_a_bad_reference_is_refused_like_any_bad_value(token: Any) -> None:
    with pytest.raises(ChannelError) as err:
        REGISTRY["sms"].validate(sms(token))
    expected = f"sms: field 'auth_token': {invalid('the auth token', PREFIX)}"
    assert str(err.value) == expected
    assert "PGPASSWORD" not in str(err.value)


def test_pagerduty_routing_key_bad_literal_and_bad_reference_have_one_message() -> None:
    def message(key: str) -> str:
        with pytest.raises(ChannelError) as err:
            REGISTRY["pagerduty"].validate({"routing_key": key})
        return str(err.value)

    assert message("short") == message("${PGPASSWORD}") == message("${HOME}")
    ok = REGISTRY["pagerduty"].validate({"routing_key": "${QESMON_SECRET_PD}"})
    assert ok["routing_key"] == "${QESMON_SECRET_PD}"


@pytest.mark.parametrize(
    ("channel", "config", "field"),
    [
        ("slack", {"webhook_url": "${QESMON_SECRET_SLACK}"}, "webhook_url"),
        ("discord", {"webhook_url": "https://discord.com/api/webhooks/${X}"}, "webhook_url"),
        ("webhook", {"url": "https://evil.example/?p=${PGPASSWORD}"}, "url"),
        ("webhook", {"url": "${QESMON_SECRET_HOOK}"}, "url"),
        ("alertmanager", {"url": "http://am:9093/${QESMON_SECRET_X}"}, "url"),
        ("sms", sms("t") | {"api_url": "${QESMON_SECRET_A}"}, "api_url"),
        (
            "webhook",
            {"url": "https://h.example", "headers": {"${QESMON_SECRET_N}": "v"}},
            "headers",
        ),
        ("webhook", {"url": "https://h.example", "headers": {"X-T": "a\r\nX-Evil: 1"}}, "headers"),
        ("webhook", {"url": "https://h.example", "headers": {"X-T": "${PGPASSWORD}"}}, "headers"),
    ],
)
def test_no_reference_in_urls_or_header_names(
    channel: str, config: dict[str, Any], field: str
) -> None:
    with pytest.raises(ChannelError) as err:
        REGISTRY[channel].validate(config)
    assert f"field '{field}" in str(err.value)


def test_header_values_may_be_whole_references_resolved_only_at_send() -> None:
    cls = REGISTRY["webhook"]
    config = {"url": "https://h.example", "headers": {"Authorization": "${QESMON_SECRET_HOOK}"}}
    hook = cls(cls.validate(config))
    assert hook.config["headers"] == {"Authorization": "${QESMON_SECRET_HOOK}"}
    resolved = hook.resolved({"QESMON_SECRET_HOOK": "Bearer xyz"})
    assert resolved["headers"] == {"Authorization": "Bearer xyz"}
    assert resolved["url"] == "https://h.example"
    with pytest.raises(ChannelError) as err:
        hook.resolved({})
    assert str(err.value) == (
        f"webhook: field 'headers.Authorization': {invalid('a header value', PREFIX)}"
    )


def test_the_prefix_is_a_setting_and_a_short_one_is_refused() -> None:
    cls = REGISTRY["sms"]
    config = sms("${OPS_TW}")
    with pytest.raises(ChannelError):
        cls.validate(config)
    channel = cls(cls.validate(config, "OPS_"), "OPS_")
    assert channel.resolved({"OPS_TW": "tok"})["auth_token"] == "tok"
    assert Settings.from_env({"SECRET_ENV_PREFIX": "OPS_"}).channels.reference_env_prefix == "OPS_"
    assert Settings.from_env({}).channels.reference_env_prefix == PREFIX
    with pytest.raises(ConfigError, match="SECRET_ENV_PREFIX"):
        Settings.from_env({"SECRET_ENV_PREFIX": "Q"})


def test_references_and_secrets_are_masked() -> None:
    config = {"webhook_url": "https://hooks.slack.com/services/T/B/abcdef", "username": "qes"}
    assert mask_config(config, {"webhook_url"}) == {
        "webhook_url": "https://hooks.slack.com/***",
        "username": "qes",
    }
    ref = "${QESMON_SECRET_TW}"
    assert mask_config({"auth_token": ref}, {"auth_token"}) == {"auth_token": ref}
    assert mask_config({"routing_key": "0123456789abcdef"}, {"routing_key"}) == {
        "routing_key": "0123***"
    }
    assert mask_config({"headers": {"Authorization": "Bearer 0123456789abcdef"}}, {"headers"}) == {
        "headers": {"Authorization": "Bear***"}
    }
    assert (
        scrub("POST https://h/services/T/B/abcdef failed", ["/services/T/B/abcdef"])
        == "POST https://h*** failed"
    )


async def test_configure_and_test_do_not_tell_which_variables_exist(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    session: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    """The exfiltration attempt of issue 15: the reference in a URL is refused, a reference
    outside the prefix is refused, and an allowed one that is not set fails the test send
    with the very message the refusals had."""
    hook = receiver.url + "/in"
    with pytest.raises(ChannelError) as outside:
        await actions.configure_channel(
            pool, nsettings, "webhook", True, {"url": hook, "headers": {"X-T": "${PGPASSWORD}"}}
        )
    with pytest.raises(ChannelError, match="field 'url'"):
        await actions.configure_channel(
            pool, nsettings, "webhook", True, {"url": hook + "?p=${PGPASSWORD}"}
        )
    unset = "${QESMON_SECRET_NOT_SET}"
    stored = await actions.configure_channel(
        pool, nsettings, "webhook", True, {"url": hook, "headers": {"X-T": unset}}
    )
    assert stored["config"]["headers"] == {"X-T": unset}
    result = await actions.send_test(pool, nsettings, session, "webhook", environ={})
    assert result["ok"] is False and result["error"] == str(outside.value)
    assert receiver.requests == []
    sent = await actions.send_test(
        pool, nsettings, session, "webhook", environ={"QESMON_SECRET_NOT_SET": "tok-abcdef"}
    )
    assert sent["ok"] is True and receiver.requests[0].headers["X-T"] == "tok-abcdef"


async def test_a_stored_reference_outside_the_prefix_switches_the_channel_off(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
) -> None:
    """A row written before references were restricted (or under another prefix) is never
    sent with: the notifier's loader checks it against the prefix it runs with."""
    await configure(pool, "sms", sms("${OPS_TW}"))
    listing = {c["channel"]: c for c in await actions.list_channels(pool, nsettings)}
    assert listing["sms"]["configured"] is False
    ops = replace_settings(nsettings, channels=dict(reference_env_prefix="OPS_"))
    listing = {c["channel"]: c for c in await actions.list_channels(pool, ops)}
    assert listing["sms"]["configured"] is True
