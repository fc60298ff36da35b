"""End to end: ``qesmon demo`` (accelerated) against the real pipeline, notifier and API.

The rules are a copy of the default rules with shorter ``for``/windows (the demo's incidents
are compressed ten times; the rule windows are not), plus the demo's notifier routing.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from api.keys import create_key_sync
from cli.demo import NOTIFICATIONS_YAML
from qesmon import vocabulary as v
from qesmon.contract import MetricType
from qesmon.settings import Settings
from tests.support.faults import free_port
from tests.support.processes import QesmonProcess, settings_env, wait_for
from tests.support.settings import replace_settings

REPO = Path(__file__).parents[2]
#: the default rules, made to decide within one 10 s window
FAST = {
    "high_error_rate": {"for": "10s", "keep_firing_for": "10s"},
    "slow_response_time": {"for": "10s", "keep_firing_for": "10s"},
    "quota_exceeded": {"window": "10s", "keep_firing_for": "10s"},
}
DEMO_NAMES = {
    v.HTTP_REQUEST,
    v.DB_QUERY,
    v.EXTERNAL_API,
    v.SUBSCRIPTION_PAYMENT,
    v.SIGNATURES_CREATED,
    v.DOCUMENTS_UPLOADED,
    v.QUOTA_UTILIZATION,
    v.USER_SIGNUP,
    v.USER_LOGIN,
    v.AUTH_FAILED,
    v.SECURITY_VIOLATION,
    v.SUBSCRIPTION_ACTIVE,
    v.CPU_USAGE,
    v.MEMORY_USAGE,
    "signing_queue_depth",
}


def fast_rules(target: Path) -> Path:
    target.mkdir()
    for path in sorted((REPO / "rules").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("id") in FAST:
            doc.update(FAST[doc["id"]])
        (target / path.name).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    (target / "notifications.yaml").write_text(NOTIFICATIONS_YAML, encoding="utf-8")
    return target


def get_json(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def nonzero_sections(body: dict[str, Any]) -> list[str]:
    """The dashboard figures that are zero or empty (an empty list means all are non-zero)."""
    business, performance = body["business_metrics"], body["performance_metrics"]
    figures = {
        **{f"revenue.{k}": x for k, x in business["revenue"].items()},
        **{f"usage.{k}": x for k, x in business["usage"].items()},
        **{f"activity.{k}": x for k, x in business["activity"].items()},
        **{f"performance.{k}": x for k, x in performance.items()},
        "alerts.active_count": body["alerts"]["active_count"],
        "alerts.alerts": len(body["alerts"]["alerts"]),
        "recommendations": len(body["recommendations"]),
    }
    return sorted(name for name, x in figures.items() if not x)


@pytest.fixture
def dsettings(settings: Settings, tmp_path: Path) -> Settings:
    return replace_settings(
        settings,
        rules_dir=fast_rules(tmp_path / "rules"),
        pipeline=dict(watermark_wait=1.0, allowed_lateness=5.0, snapshot_interval=1),
        api=dict(port=free_port(), metrics_port=free_port()),
    )


def test_demo_fills_every_event_type_fires_and_resolves_alerts_and_the_dashboard(
    dsettings: Settings,
    redis_client: redis.Redis,
    db: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    env = settings_env(
        dsettings,
        API_PORT=str(dsettings.api.port),
        PROMETHEUS_METRICS_PORT=str(dsettings.api.metrics_port),
        RESOURCE_MONITORING_INTERVAL="2",
        NOTIFIER_TIME_SCALE="0.05",  # the demo's 1 min escalation after 3 s
    )
    key = create_key_sync(db, role="admin", name="demo e2e")
    api = f"http://127.0.0.1:{dsettings.api.port}/api/v1/metrics"
    started = time.time()
    procs = {
        name: QesmonProcess(args, env, tmp_path / f"{name}.log")
        for name, args in {
            "pipeline": ["pipeline", "--recovery-dir", str(tmp_path / "recovery")],
            "notifier": ["notifier"],
            "api": ["api"],
            "demo": [
                "demo",
                *("--rate", "150", "--speed", "10", "--seed", "7"),
                *("--backfill", "1d", "--backfill-rate", "0.5"),
            ],
        }.items()
    }
    try:
        for proc in procs.values():
            proc.start()
        seen: dict[str, Any] = {}

        def everything() -> bool:
            for name, proc in procs.items():
                assert proc.alive(), f"{name} died:\n{proc.log()}"
            if "dashboard" not in seen:
                with_retry = _try(lambda: get_json(f"{api}/dashboard?days=2", key))
                if with_retry is not None and not nonzero_sections(with_retry):
                    seen["dashboard"] = with_retry
            if "resolved" not in seen:
                row = db.execute(
                    "SELECT id FROM alerts WHERE rule_id = 'high_error_rate'"
                    " AND fired_at IS NOT NULL AND state = 'resolved'"
                ).fetchone()
                if row:
                    seen["resolved"] = row[0]
            log = procs["demo"].log()
            notices = {
                reason
                for reason in ("FIRING", "ESCALATED", "RESOLVED")
                if any(
                    line.startswith("[notify]") and reason in line and "High error rate" in line
                    for line in log.splitlines()
                )
            }
            seen["notices"] = notices
            return {"dashboard", "resolved"} <= set(seen) and len(notices) == 3

        try:
            wait_for(everything, 75, "the demo's incidents to show end to end", interval=1.0)
        except AssertionError:
            try:
                missing: object = nonzero_sections(get_json(f"{api}/dashboard?days=2", key))
            except (OSError, urllib.error.HTTPError) as exc:
                body = exc.read().decode() if isinstance(exc, urllib.error.HTTPError) else ""
                missing = f"dashboard failed: {exc} {body}\n{procs['api'].log()[-2000:]}"
            raise AssertionError(
                f"seen {sorted(seen)}, notices {seen.get('notices')}, zero: {missing}\n"
                f"demo log:\n{procs['demo'].log()[-3000:]}"
            ) from None
        took = time.time() - started
        alerts = get_json(f"{api}/alerts?active_only=false", key)["alerts"]
        episode = next(a for a in alerts if a["id"] == seen["resolved"])
        assert episode["rule_id"] == "high_error_rate" and episode["state"] == "resolved"
        assert episode["labels"] == {"service": "signing", "endpoint": "/api/v1/signatures"}
        assert episode["fired_at"] is not None and episode["resolved_at"] is not None

        assert procs["demo"].stop() == 0, procs["demo"].log()
        # the demo switched its webhook configuration off on the way out
        enabled = db.execute(
            "SELECT enabled FROM receivers WHERE tenant_id = '' AND name = 'webhook'"
        ).fetchone()
        assert enabled == (False,)
    finally:
        for proc in procs.values():
            if proc.proc is not None:
                proc.stop()

    types = {r[0] for r in db.execute("SELECT DISTINCT type FROM metrics_rollup").fetchall()}
    assert types == {t.value for t in MetricType}
    names = {r[0] for r in db.execute("SELECT DISTINCT name FROM metrics_rollup").fetchall()}
    assert names >= DEMO_NAMES
    hour = math.floor(started / 3600) * 3600
    history = db.execute(
        "SELECT count(DISTINCT date_trunc('hour', bucket)), coalesce(sum(count), 0)"
        " FROM metrics_rollup WHERE width_s = 3600 AND bucket < to_timestamp(%s)",
        (hour,),
    ).fetchone()
    assert history is not None and history[0] == 24, history  # a day of hourly history
    assert redis_client.xlen(dsettings.streams.dead) == 0, redis_client.xrange(
        dsettings.streams.dead, count=5
    )

    deliveries = db.execute(
        "SELECT count(*) FROM deliveries WHERE channel = 'webhook' AND status = 'sent'"
    ).fetchone()
    assert deliveries is not None and deliveries[0] >= 3
    dashboard = seen["dashboard"]
    assert dashboard["business_metrics"]["revenue"]["total"] > 0
    print(f"demo end to end: all seen after {took:.1f} s")


def _try(call: Any) -> Any:
    try:
        return call()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
