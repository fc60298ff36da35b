"""The demo's parts against the real servers: receiver, webhook channel, backfill shard,
options, and ``qesmon up`` starting (and stopping) it."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import redis

from cli.demo import NOTIFICATIONS_YAML, DemoOptions, WebhookReceiver, notifier_rules_dir
from cli.demo.notify import claim_webhook, outbound_allow, reaches, release_webhook
from cli.demo.run import backfill_range, parse_period, run
from cli.demo.session import PRIVATE_REDIS_VAR, why_no_demo
from notifier.channels import REGISTRY
from notifier.client import AlertingSystem
from notifier.policy import load_policy
from qesmon.contract import parse_entry
from qesmon.errors import ConfigError
from qesmon.settings import Settings
from tests.support.faults import free_port
from tests.support.processes import settings_env, wait_for
from tests.support.settings import replace_settings

REPO = Path(__file__).parents[2]

AM_PAYLOAD = {
    "version": "4",
    "status": "firing",
    "notification_reason": "escalated",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "High error rate", "severity": "critical"},
            "annotations": {"summary": "31.2 % of requests fail on signing /api/v1/signatures"},
        }
    ],
}


async def test_the_receiver_prints_each_notice_and_refuses_what_is_not_json() -> None:
    out = io.StringIO()
    receiver = WebhookReceiver(out)
    url = await receiver.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/notify", url)
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=AM_PAYLOAD) as response:
                assert response.status == 200
            async with session.post(url, data=b"not json") as response:
                assert response.status == 400
    finally:
        await receiver.stop()
    assert receiver.received == [AM_PAYLOAD]
    line = out.getvalue().strip()
    assert line.startswith("[notify] ")
    assert line.endswith(
        "ESCALATED    critical High error rate: 31.2 % of requests fail on signing "
        "/api/v1/signatures"
    )


def _webhook(db: psycopg.Connection[tuple[object, ...]]) -> tuple[object, ...] | None:
    return db.execute(
        "SELECT enabled, config FROM receivers WHERE tenant_id = '' AND name = 'webhook'"
    ).fetchone()


def test_the_demo_claims_the_webhook_channel_only_when_nobody_else_has(
    settings: Settings, db: psycopg.Connection[tuple[object, ...]]
) -> None:
    assert claim_webhook(settings, "http://127.0.0.1:9/notify") is None
    row = _webhook(db)
    assert row is not None and row[0] is True
    assert row[1]["url"] == "http://127.0.0.1:9/notify"  # type: ignore[index]
    # a later demo (another port) takes over its own configuration
    assert claim_webhook(settings, "http://127.0.0.1:10/notify") is None
    release_webhook(settings, "http://127.0.0.1:9/notify")  # not the current one: no-op
    assert _webhook(db)[0] is True  # type: ignore[index]
    release_webhook(settings, "http://127.0.0.1:10/notify")
    assert _webhook(db)[0] is False  # type: ignore[index]

    # somebody's own webhook is left alone, and so is one given by WEBHOOK_URL
    AlertingSystem(settings.database_url).configure_channel(
        "webhook", {"url": "https://hooks.example.com/qes"}
    )
    why = claim_webhook(settings, "http://127.0.0.1:11/notify")
    assert why is not None and "configured already" in why
    assert _webhook(db)[1]["url"] == "https://hooks.example.com/qes"  # type: ignore[index]
    release_webhook(settings, "http://127.0.0.1:11/notify")
    assert _webhook(db)[0] is True  # type: ignore[index]
    with_env = replace_settings(
        settings, channels=dict(webhook_url="https://hooks.example.com/env")
    )
    assert "WEBHOOK_URL" in (claim_webhook(with_env, "http://127.0.0.1:12/notify") or "")


def test_the_demos_notifier_gets_the_demo_routing(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "templates").mkdir()
    (rules / "high_cpu.yaml").write_text((REPO / "rules" / "high_cpu.yaml").read_text())
    target = notifier_rules_dir(rules, tmp_path / "var" / "demo")
    assert target == tmp_path / "var" / "demo" / "notifier"
    assert (target / "notifications.yaml").read_text() == NOTIFICATIONS_YAML
    assert (target / "templates").resolve() == (rules / "templates").resolve()
    policy = load_policy(target, frozenset(REGISTRY))
    assert policy.routing.channels == ("webhook",)
    assert [lv.after for lv in policy.escalation["demo-critical"].levels] == [0.0, 60.0]
    # RULES_DIR's own routing (rules/notifications.yaml) is for --no-demo; the demo owns the
    # webhook of the private set-up and routes there
    (rules / "notifications.yaml").write_text("routing:\n  defaults:\n    channels: [slack]\n")
    again = notifier_rules_dir(rules, tmp_path / "again")
    assert load_policy(again, frozenset(REGISTRY)).routing.channels == ("webhook",)


def test_up_runs_the_demo_only_against_the_private_redis(settings: Settings) -> None:
    def with_env(**extra: str) -> Settings:
        return dataclasses.replace(settings, extra=extra)

    private = {PRIVATE_REDIS_VAR: settings.redis_url}
    assert why_no_demo(with_env(**private), no_demo=False) is None
    assert why_no_demo(with_env(**private), no_demo=True) == "--no-demo"
    assert why_no_demo(with_env(**private, QESMON_DEMO="0"), no_demo=False) == "QESMON_DEMO=0"
    assert "not the private Redis" in (why_no_demo(with_env(), no_demo=False) or "")
    elsewhere = {PRIVATE_REDIS_VAR: "redis://127.0.0.1:1/0"}
    assert "not the private Redis" in (why_no_demo(with_env(**elsewhere), no_demo=False) or "")


def test_options_are_checked_and_name_the_option() -> None:
    assert parse_period("7d") == 7 * 86400
    assert parse_period("1d12h") == 36 * 3600
    assert parse_period("90m") == 5400
    for bad in ("7", "7x", "-1d", "0h", "100d", "d7"):
        with pytest.raises(ConfigError, match="--backfill"):
            parse_period(bad)
    for field, value in (("rate", 0.0), ("tenants", 0), ("speed", -1.0), ("duration", -5.0)):
        with pytest.raises(ConfigError, match=f"--{field}"):
            DemoOptions(**{field: value})  # type: ignore[arg-type]


def test_the_cli_refuses_a_bad_option_with_its_name(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--rate", "0", "--no-receiver"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--rate: must be > 0" in done.stderr


def _events(client: redis.Redis, stream: str) -> list[Any]:
    out = []
    for entry_id, fields in client.xrange(stream):  # type: ignore[union-attr]
        events, rejected = parse_entry(entry_id, fields)
        assert rejected == []
        out += events
    return out


async def test_backfill_writes_the_backfill_shard_up_to_the_hour_and_only_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    options = DemoOptions(
        rate=100, duration=1.0, backfill=parse_period("3h"), seed=3, receiver=False
    )
    out = io.StringIO()
    began = time.time()
    assert await run(settings, options, out) == 0
    start, end = backfill_range(began, 3 * 3600)
    history = _events(redis_client, settings.streams.backfill)
    assert len(history) > 500
    stamps = [e.ts for e in history]
    assert stamps == sorted(stamps)  # in time order: nothing late for the backfill watermark
    assert start <= stamps[0] and stamps[-1] < end <= began
    live = _events(redis_client, settings.streams.metrics[0])
    assert len(live) > 50
    assert all(e.ts >= began - 0.2 for e in live)
    text = out.getvalue()
    assert "backfill done" in text and "stopped after" in text

    again = io.StringIO()
    assert await run(settings, dataclasses.replace(options, duration=0.3), again) == 0
    assert "backfill skipped" in again.getvalue()
    assert len(_events(redis_client, settings.streams.backfill)) == len(history)


def test_up_starts_everything_with_the_demo_prints_where_to_look_and_stops_cleanly(
    settings: Settings, db: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "high_cpu.yaml").write_text((REPO / "rules" / "high_cpu.yaml").read_text())
    api_port = free_port()
    env = settings_env(
        dataclasses.replace(settings, rules_dir=rules),
        API_PORT=str(api_port),
        PROMETHEUS_METRICS_PORT=str(free_port()),
        RECOVERY_DIR=str(tmp_path / "recovery"),
        LOG_LEVEL="WARNING",
        **{PRIVATE_REDIS_VAR: settings.redis_url},
    )
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "up"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        key = wait_for(
            lambda: re.search(r"admin key  (qes_\S+)", log.read_text()), 30, "the banner"
        ).group(1)
        text = log.read_text()
        assert f"http://127.0.0.1:{api_port}/api/v1/metrics/health" in text
        assert f"http://127.0.0.1:{api_port}/live" in text
        assert "var/demo/notifier/notifications.yaml" in text
        assert (tmp_path / "var" / "demo" / "notifier" / "notifications.yaml").exists()

        def alerts() -> Any:
            assert proc.poll() is None, log.read_text()
            request = urllib.request.Request(
                f"http://127.0.0.1:{api_port}/api/v1/metrics/alerts",
                headers={"Authorization": f"Bearer {key}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.load(response)
            except OSError:
                return None

        assert wait_for(alerts, 45, "the API to answer with the session key")["count"] == 0
        wait_for(lambda: "[demo] backfill" in log.read_text(), 30, "the demo's backfill")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    revoked = db.execute("SELECT revoked_at IS NOT NULL FROM api_keys").fetchall()
    assert revoked == [(True,)]
    assert _webhook(db)[0] is False, log.read_text()  # type: ignore[index]


def test_up_lets_the_notifier_reach_exactly_the_demo_receiver() -> None:
    # the outbound guard refuses loopback: qesmon up adds the receiver's port, nothing more
    assert outbound_allow(Settings(), 8123) == "127.0.0.1:8123"
    operators = Settings.from_env({"OUTBOUND_ALLOW": "10.0.0.0/8"})
    assert outbound_allow(operators, 8123) == "10.0.0.0/8,127.0.0.1:8123"
    notifier = Settings.from_env({"OUTBOUND_ALLOW": outbound_allow(operators, 8123)})
    assert reaches(notifier, 8123) and not reaches(notifier, 8124)
    assert not reaches(operators, 8123) and not reaches(Settings(), 8123)
