"""What ``qesmon up`` asks of the demo: whether to run it, a session key, the banner."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cli.demo.incidents import CYCLE
from cli.demo.run import DemoOptions
from qesmon.settings import Settings

#: ``scripts/setup.sh`` writes this into ``var/env.sh`` with the URL of the Redis it started
PRIVATE_REDIS_VAR = "QESMON_PRIVATE_REDIS_URL"


def why_no_demo(settings: Settings, *, no_demo: bool) -> str | None:
    """Why ``qesmon up`` must not start demo traffic, or None when it should.

    The demo runs only against the private Redis that ``scripts/setup.sh`` started (it marks
    it in ``var/env.sh``), never against a REDIS_URL that may be a real platform's.
    """
    if no_demo:
        return "--no-demo"
    if settings.extra.get("QESMON_DEMO", "1").strip().lower() in ("0", "false", "no", "off"):
        return "QESMON_DEMO=0"
    private = settings.extra.get(PRIVATE_REDIS_VAR)
    if not private or private != settings.redis_url:
        return (
            "REDIS_URL is not the private Redis that scripts/setup.sh started "
            "(run `qesmon demo` yourself to send demo traffic there)"
        )
    return None


def create_session_key(settings: Settings) -> str:
    """An admin API key for one ``qesmon up`` session (revoke it with :func:`revoke_key`)."""
    from api.keys import create_key_sync
    from qesmon.db import connect

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with connect(settings.database_url, autocommit=True) as conn:
        return create_key_sync(conn, role="admin", name=f"qesmon up session {stamp}")


def revoke_key(settings: Settings, key: str) -> None:
    from api.keys import hash_key
    from qesmon.db import connect

    with connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_hash = %s AND revoked_at IS NULL",
            (hash_key(key),),
        )


def up_banner(
    settings: Settings, key: str | None, demo_off: str | None, routing: Path | None
) -> str:
    """Where to look, printed by ``qesmon up`` once everything is started."""
    api = f"http://{settings.api.host}:{settings.api.port}"
    auth = f"-H 'Authorization: Bearer {key}'" if key else "-H 'Authorization: Bearer <key>'"
    lines = [
        "qesmon up: pipeline, notifier, API"
        + ("" if demo_off else " and demo traffic")
        + " are running; Ctrl-C stops them all",
        f"  REST API   {api}/api/v1/metrics/health",
        f"  admin key  {key} (revoked when this session stops)"
        if key
        else "  admin key  none (create one: qesmon keys create --role admin)",
        f"  dashboard  curl -s {auth} {api}/api/v1/metrics/dashboard",
        f"  alerts     curl -s {auth} '{api}/api/v1/metrics/alerts?active_only=false'",
        f"  live page  {api}/live",
        f"  exporter   http://{settings.api.metrics_host}:{settings.api.metrics_port}/metrics",
    ]
    if demo_off:
        lines.append(f"  demo       off: {demo_off}")
    else:
        lines.append(
            f"  demo       {DemoOptions().tenants} tenants, a week of history, incidents every "
            f"{CYCLE / 60:g} min; notifications print as [notify] lines "
            "(turn off: --no-demo or QESMON_DEMO=0)"
        )
        if routing is not None:
            lines.append(
                f"  routing    {routing / 'notifications.yaml'} (the demo's; "
                f"{settings.rules_dir}/notifications.yaml applies with --no-demo)"
            )
    lines.append("  stop       Ctrl-C; then `make stop` stops Redis and PostgreSQL")
    return "\n".join(lines)
