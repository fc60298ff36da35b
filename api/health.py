"""``/api/v1/metrics/health``: is every part of the data path alive? 200 if so, 503 if not.

Checks: Redis answers PING; TimescaleDB answers a query; the pipeline's heartbeat (Redis hash
``<prefix>:health:pipeline``) is at most ``STALE_AFTER`` seconds old and its lag at most
``MAX_LAG_ENTRIES``; the notifier's heartbeat (``<prefix>:health:notifier``) is fresh; every
rule file in ``RULES_DIR`` loads. Each check reports ``ok`` and what it saw.

``supervisor`` (beside the checks, never a reason for 503 by itself) shows what ``qesmon up``
publishes in ``<prefix>:health:supervisor`` (:mod:`cli.supervisor`): per child its state,
restarts, last exit status and start time, the total of restarts, and a ``warning`` naming
the children that were restarted. Without ``qesmon up`` it says ``{"running": false}``.
``maintenance`` (informative too) is the last ``qesmon maintain`` pass (:mod:`cli.maintain`):
when it finished, whether every step worked, and what it dropped and deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from qesmon.settings import Settings
from rules.loader import load_rules

STALE_AFTER = 30.0
MAX_LAG_ENTRIES = 100_000
CHECK_TIMEOUT = 2.0


def _numbers(raw: dict[Any, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in raw.items():
        k = key.decode() if isinstance(key, bytes) else str(key)
        try:
            out[k] = float(value)
        except (TypeError, ValueError):
            continue
    return out


async def read_health_hash(client: aioredis.Redis, key: str) -> dict[str, float]:
    return _numbers(await client.hgetall(key))


def heartbeat_check(values: dict[str, float], now: float) -> dict[str, Any]:
    if "heartbeat" not in values:
        return {"ok": False, "error": "no heartbeat yet (is it running?)"}
    age = max(0.0, now - values["heartbeat"])
    out: dict[str, Any] = {"ok": age <= STALE_AFTER, "heartbeat_age_seconds": round(age, 3)}
    if not out["ok"]:
        out["error"] = f"heartbeat is {age:.0f} s old (stale after {STALE_AFTER:g} s)"
    return out


async def _timed(check: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT:g} s"}
    except Exception as exc:  # a health check reports any failure instead of raising it
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}


def rule_files_check(settings: Settings) -> dict[str, Any]:
    """Load the rule files the way the pipeline does; report each error with its location."""
    ruleset, errors = load_rules([settings.rules_dir])
    return {
        "ok": not errors,
        "errors": [str(e) for e in errors],
        "rules": len(ruleset.rules),
        "dir": str(settings.rules_dir),
    }


async def check(
    settings: Settings, client: aioredis.Redis, pool: AsyncConnectionPool[Any]
) -> tuple[bool, dict[str, Any]]:
    now = time.time()

    async def redis_ok() -> dict[str, Any]:
        started = time.perf_counter()
        await client.ping()
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def db_ok() -> dict[str, Any]:
        started = time.perf_counter()
        async with pool.connection(timeout=CHECK_TIMEOUT) as conn:
            await conn.execute("SELECT 1")
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def pipeline_ok() -> dict[str, Any]:
        raw = await client.hgetall(settings.streams.key("health", "pipeline"))
        values = _numbers(raw)
        out = heartbeat_check(values, now)
        lag = values.get("lag_entries")
        if lag is not None:
            out["lag_entries"] = lag
            if lag > MAX_LAG_ENTRIES and out["ok"]:
                out["ok"] = False
                out["error"] = f"{lag:.0f} entries behind (at most {MAX_LAG_ENTRIES})"
        for name in (
            "events_total",
            "dead_letters_total",
            "late_events_total",
            "window_close_delay_seconds",
            "rule_errors_total",
            "limited_events_total",
            "alert_groups_limited_total",
            "db_refused_total",
            "active_series",
        ):
            if name in values:
                out[name] = values[name]
        # a limit hit does not make the pipeline unhealthy, but says so (texts, from the same read)
        for name in ("last_limit", "last_alert_limit"):
            note = raw.get(name) or raw.get(name.encode())
            if note:
                out[name] = note.decode("utf-8", "replace") if isinstance(note, bytes) else note
        return out

    async def notifier_ok() -> dict[str, Any]:
        values = await read_health_hash(client, settings.streams.key("health", "notifier"))
        out = heartbeat_check(values, now)
        out.update({k: x for k, x in values.items() if k != "heartbeat"})
        return out

    async def rules_ok() -> dict[str, Any]:
        return await asyncio.to_thread(rule_files_check, settings)

    async def supervisor() -> dict[str, Any]:
        raw = await client.hgetall(settings.streams.key("health", "supervisor"))
        return supervisor_section(raw, now)

    async def maintenance() -> dict[str, Any]:
        async with pool.connection(timeout=CHECK_TIMEOUT) as conn:
            cur = await conn.execute(
                "SELECT extract(epoch FROM finished_at)::float8, ok, error, summary"
                " FROM maintenance"
            )
            row = await cur.fetchone()
        if row is None:
            return {"ran": False}
        done, ok, error, summary = row
        return {
            "ran": True,
            "ok": ok,
            "age_seconds": round(now - done, 3),
            "error": error,
            **summary,
        }

    names = ("redis", "database", "pipeline", "notifier", "rules")
    *results, supervised, maintained = await asyncio.gather(
        *(
            _timed(c)
            for c in (redis_ok, db_ok, pipeline_ok, notifier_ok, rules_ok, supervisor, maintenance)
        )
    )
    checks = dict(zip(names, results, strict=True))
    healthy = all(c["ok"] for c in checks.values())
    supervised.pop("ok", None)  # informative: a restart that worked is not a failure
    return healthy, {
        "status": "healthy" if healthy else "unhealthy",
        "time": now,
        "checks": checks,
        "supervisor": supervised,
        "maintenance": maintained,
    }


def supervisor_section(raw: dict[Any, Any], now: float) -> dict[str, Any]:
    """The ``supervisor`` section from the hash :class:`cli.supervisor.Supervisor` writes."""
    text = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }
    if "heartbeat" not in text:
        return {"running": False}
    children: dict[str, dict[str, Any]] = {}
    for key, value in text.items():
        name, sep, part = key.rpartition(":")
        if not sep:
            continue
        child = children.setdefault(name, {})
        number = int if part in ("restarts", "last_exit", "pid") else float
        try:
            child[part] = value if part == "state" else number(value)
        except ValueError:
            child[part] = None
    try:
        age = max(0.0, now - float(text["heartbeat"]))
    except ValueError:
        age = float("inf")
    restarted = {n: c.get("restarts") or 0 for n, c in sorted(children.items())}
    out: dict[str, Any] = {
        "running": age <= STALE_AFTER and any(c.get("state") != "ended" for c in children.values()),
        "heartbeat_age_seconds": round(age, 3) if age != float("inf") else None,
        "restarts": sum(restarted.values()),
        "children": children,
    }
    if out["restarts"]:
        out["warning"] = "restarted: " + ", ".join(
            f"{n} {r} time(s) (last exit status {children[n].get('last_exit')})"
            for n, r in restarted.items()
            if r
        )
    return out
