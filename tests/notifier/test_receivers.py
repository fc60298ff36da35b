"""Tenant-owned receivers: a tenant's receivers get every notice of that tenant's alerts and
nothing else, through the real notifier, outbox and loopback receivers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from psycopg_pool import AsyncConnectionPool

from notifier import actions, decide
from notifier.actions import InvalidChannelConfig, TooManyReceivers, UnknownReceiver
from notifier.receivers import Available, owner, receiver_id
from qesmon.alerts import AlertState
from qesmon.settings import Settings
from tests.notifier.conftest import Receiver, push, rows, running, transition, wait_for
from tests.notifier.test_decide import alert as decided_alert
from tests.support.settings import replace_settings

WEBHOOK_ONLY = """
routing:
  defaults: {channels: [webhook], group_wait: 0s, repeat_interval: 0s}
"""


def tenants_of(r: Receiver) -> list[tuple[str, str]]:
    """(tenant, status) of every alert in every message ``r`` got (Alertmanager format)."""
    return sorted(
        (a["labels"].get("tenant", ""), a["status"]) for body in r.bodies() for a in body["alerts"]
    )


async def test_a_tenants_receivers_hear_of_its_alerts_only(
    nsettings: Settings,
    pool: AsyncConnectionPool[Any],
    aredis: redis.asyncio.Redis,
) -> None:
    (nsettings.rules_dir / "notifications.yaml").write_text(WEBHOOK_ONLY, encoding="utf-8")
    platform, acme, beta = Receiver(), Receiver(), Receiver()
    for r in (platform, acme, beta):
        await r.start()
    try:
        hook = {"format": "alertmanager"}
        await actions.configure_channel(
            pool, nsettings, "webhook", True, {**hook, "url": platform.url + "/p"}
        )
        await actions.configure_channel(
            pool, nsettings, "webhook", True, {**hook, "url": acme.url + "/a"}, tenant="acme"
        )
        await actions.configure_channel(
            pool,
            nsettings,
            "webhook",
            True,
            {**hook, "url": beta.url + "/b"},
            tenant="beta",
            name="oncall",
        )
        async with running(nsettings) as notifier:
            assert {"webhook", "webhook@acme", "oncall@beta"} <= set(notifier.available)
            for fp, tenant in (("fa", "acme"), ("fb", "beta"), ("fp", "")):
                await push(aredis, nsettings, transition(fp, tenant=tenant))
            await wait_for(lambda: len(tenants_of(platform)) == 3, what="the platform's three")
            await wait_for(lambda: tenants_of(acme) == [("acme", "firing")], what="acme's")
            await wait_for(lambda: tenants_of(beta) == [("beta", "firing")], what="beta's")
            # told receivers hear of the resolution too, each of its own tenant's only
            await push(aredis, nsettings, transition("fa", AlertState.RESOLVED, tenant="acme"))
            await wait_for(lambda: len(tenants_of(acme)) == 2, what="acme's resolved notice")
            await wait_for(lambda: len(tenants_of(platform)) == 4, what="the platform's resolved")
            await asyncio.sleep(0.3)  # a wrong extra notice would have gone out by now
            delivered = await rows(
                pool, "SELECT channel, count(*) FROM deliveries GROUP BY channel ORDER BY 1"
            )
        assert tenants_of(acme) == [("acme", "firing"), ("acme", "resolved")]
        assert tenants_of(beta) == [("beta", "firing")]
        assert sorted(t for t, _ in tenants_of(platform)) == ["", "acme", "acme", "beta"]
        assert delivered == [("oncall@beta", 1), ("webhook", 4), ("webhook@acme", 2)]
    finally:
        for r in (platform, acme, beta):
            await r.stop()


def test_no_outbox_row_for_a_tenants_receiver_about_another_tenants_alert() -> None:
    available = Available({"webhook": "webhook", "ops@acme": "slack", "ops@beta": "slack"})
    beta_alert = decided_alert(tenant="beta")
    context = decide.alert_context(beta_alert, state="firing", at=1.0)
    rows_ = decide.notices(
        key="k",
        channels=["webhook", "ops@acme", "ops@beta"],  # asked for all three
        kind="firing",
        alert_id=beta_alert.id,
        group_key="g",
        context=context,
        template_set=None,
        now=1.0,
        available=available,
    )
    assert [n.channel for n in rows_] == ["webhook", "ops@beta"]
    assert available.of_tenant("acme") == ["ops@acme"] and available.of_tenant("") == []


@pytest.mark.parametrize(
    ("tenant", "name"),
    [("acme", "ops"), ("", "slack"), ("a@b", "x"), ("ünï cødé", "x-1_2")],
)
def test_receiver_ids_name_their_owner(tenant: str, name: str) -> None:
    rid = receiver_id(tenant, name)
    assert owner(rid) == tenant
    assert rid == (name if not tenant else f"{name}@{tenant}")


async def test_names_are_checked_and_the_platform_names_its_receivers_after_the_channel(
    nsettings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    hook = {"url": "https://hooks.example/x"}
    with pytest.raises(InvalidChannelConfig, match="named after their channel"):
        await actions.configure_channel(pool, nsettings, "webhook", True, hook, name="other")
    for bad in ("", "Ops", "ops@acme", "a\x00b", "x" * 64, "-lead", "ops/../x", "ops\n"):
        with pytest.raises(InvalidChannelConfig, match="receiver: 1-63 of"):
            await actions.configure_channel(
                pool, nsettings, "webhook", True, hook, tenant="acme", name=bad
            )
    assert await rows(pool, "SELECT * FROM receivers") == []
    with pytest.raises(UnknownReceiver):
        await actions.delete_receiver(pool, "acme", "a\x00b")
    with pytest.raises(UnknownReceiver):
        await actions.delete_receiver(pool, "acme", "never")


async def test_a_tenant_has_at_most_receivers_per_tenant_even_when_asking_at_once(
    nsettings: Settings, pool: AsyncConnectionPool[Any]
) -> None:
    settings = replace_settings(nsettings, channels=dict(receivers_per_tenant=3))
    hook = {"url": "https://hooks.example/x"}

    async def create(n: int) -> str:
        try:
            await actions.configure_channel(
                pool, settings, "webhook", True, hook, tenant="acme", name=f"r{n}"
            )
            return "ok"
        except TooManyReceivers:
            return "refused"

    results = await asyncio.gather(*(create(n) for n in range(12)))
    assert sorted(results) == ["ok"] * 3 + ["refused"] * 9
    stored = await rows(pool, "SELECT name FROM receivers WHERE tenant_id = 'acme'")
    assert len(stored) == 3
    # changing one of the three is not a fourth; another tenant has its own three
    again = await actions.configure_channel(
        pool, settings, "webhook", False, hook, tenant="acme", name=stored[0][0]
    )
    assert again["enabled"] is False
    await actions.configure_channel(pool, settings, "webhook", True, hook, tenant="beta")
    with pytest.raises(TooManyReceivers, match="at most 3: RECEIVERS_PER_TENANT"):
        await actions.configure_channel(pool, settings, "webhook", True, hook, tenant="acme")
    await actions.delete_receiver(pool, "acme", stored[1][0])
    assert await create(99) == "ok"
