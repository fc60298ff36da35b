"""The notifier side of the demo: routing for `qesmon up`, the webhook receiver, the channel."""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from qesmon.settings import Settings

DEMO_HEADER = "X-Qesmon-Demo"

#: Routing for the demo's notifier when RULES_DIR has none: every alert to the webhook
#: channel (the demo's receiver), critical ones escalated after a minute.
NOTIFICATIONS_YAML = """\
# Written by `qesmon up` for the demo: RULES_DIR has no notifier routing file, so alerts go
# to the `webhook` channel, which `qesmon demo` points at its receiver (it prints them).
# Put a routing file (`routing:` / `escalation_policies:`) into RULES_DIR to replace this.
routing:
  defaults:
    channels: [webhook]
    group_by: [rule_id, tenant]
    group_wait: 1s
    repeat_interval: 30m
  routes:
    - match: {severity: critical}
      escalation: demo-critical
escalation_policies:
  demo-critical:
    levels:
      - {after: 0s, channels: [webhook]}
      - {after: 1m, channels: [webhook]}
"""


def notifier_rules_dir(rules_dir: Path, work_dir: Path) -> Path:
    """A RULES_DIR for the demo's notifier: the demo's own routing.

    The demo owns the webhook channel of the private set-up, so it routes every alert there
    and escalates critical ones after a minute, so that a newcomer sees escalation within the
    first incident; RULES_DIR's own routing (``rules/notifications.yaml``) applies with
    ``--no-demo``. ``work_dir/notifier`` gets :data:`NOTIFICATIONS_YAML` (and a link to
    ``rules_dir/templates`` when there is one); the pipeline keeps reading the rules from
    ``rules_dir``.
    """
    target = work_dir / "notifier"
    target.mkdir(parents=True, exist_ok=True)
    (target / "notifications.yaml").write_text(NOTIFICATIONS_YAML, encoding="utf-8")
    templates = target / "templates"
    if (rules_dir / "templates").is_dir() and not templates.exists():
        templates.symlink_to((rules_dir / "templates").resolve(), target_is_directory=True)
    return target


class WebhookReceiver:
    """A loopback HTTP server that takes Alertmanager-style webhook posts and prints them.

    ::

        receiver = WebhookReceiver(sys.stdout)
        url = await receiver.start()          # http://127.0.0.1:<port>/notify
        ...
        await receiver.stop()
    """

    def __init__(self, out: TextIO, port: int = 0) -> None:
        self.out = out
        self.port = port
        self.received: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "expected a JSON body"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "expected a JSON object"}, status=400)
        self.received.append(body)
        reason = str(body.get("notification_reason") or body.get("status") or "?")
        for alert in body.get("alerts") or []:
            labels = alert.get("labels") or {}
            summary = (alert.get("annotations") or {}).get("summary", "")
            print(
                f"[notify] {time.strftime('%H:%M:%S')} {reason.upper():<12} "
                f"{labels.get('severity', '?'):<8} {labels.get('alertname', '?')}: {summary}",
                file=self.out,
                flush=True,
            )
        return web.json_response({"ok": True})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/notify", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = int(port)
        return f"http://{host}:{port}/notify"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def free_port() -> int:
    """A loopback port nothing listens on now: ``qesmon up`` gives it to the receiver and
    allows the notifier to reach it (see :func:`outbound_allow`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def outbound_allow(settings: Settings, port: int) -> str:
    """``OUTBOUND_ALLOW`` that lets the notifier reach the receiver on loopback ``port``, which
    the outbound guard refuses otherwise, besides what the operator allowed."""
    allowed = str(settings.channels.outbound_allow or "")
    return ",".join(part for part in (allowed, f"127.0.0.1:{port}") if part)


def reaches(settings: Settings, port: int) -> bool:
    """Whether a notifier with ``settings`` may reach the receiver on loopback ``port``."""
    allow = settings.channels.outbound_allow
    return allow is not None and allow.allows(ipaddress.ip_address("127.0.0.1"), port)


def _webhook_config(url: str) -> dict[str, Any]:
    return {"url": url, "headers": {DEMO_HEADER: "receiver"}, "format": "alertmanager"}


def _webhook_row(settings: Settings) -> tuple[bool, dict[str, Any]] | None:
    from qesmon.db import connect

    with connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT enabled, config FROM receivers WHERE tenant_id = '' AND name = 'webhook'"
        ).fetchone()
    if row is None:
        return None
    return bool(row[0]), row[1] if isinstance(row[1], dict) else {}


def _is_ours(config: dict[str, Any]) -> bool:
    headers = config.get("headers")
    return isinstance(headers, dict) and DEMO_HEADER in headers


def claim_webhook(settings: Settings, url: str) -> str | None:
    """Point the ``webhook`` channel at ``url``; None when done, else why it was left alone."""
    from notifier.client import AlertingSystem

    if settings.channels.webhook_url:
        return "WEBHOOK_URL is set, so alerts go there"
    row = _webhook_row(settings)
    if row is not None and row[0] and not _is_ours(row[1]):
        return "the webhook channel is configured already (not by the demo), so alerts go there"
    AlertingSystem(settings.database_url).configure_channel("webhook", _webhook_config(url))
    return None


def release_webhook(settings: Settings, url: str) -> None:
    """Switch the demo's webhook configuration off: its receiver is going away."""
    from notifier.client import AlertingSystem

    row = _webhook_row(settings)
    if row is not None and _is_ours(row[1]) and row[1].get("url") == url:
        AlertingSystem(settings.database_url).configure_channel(
            "webhook", _webhook_config(url), enabled=False
        )
