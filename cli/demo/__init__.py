"""``qesmon demo``: a believable day of the QES platform, pushed through the SDK, with incidents.

What it sends (every event through :class:`~qesmon.sdk.MetricsCollector`, names and labels
from :mod:`qesmon.vocabulary`), for a few tenants on the ``starter``, ``business`` and
``enterprise`` plans, paying in EUR, USD, GBP or CHF:

* traffic, in proportion to ``--rate`` (events per second): ``http_request`` on eight
  endpoints of four services (log-normal latencies, ~3 % 4xx, ~0.1 % 5xx), ``db_query``,
  ``external_api`` (HSM signing and TSA time stamps for advanced and qualified signatures),
  ``documents_uploaded``, ``signatures_created`` (simple, advanced, qualified, in each plan's
  mix), ``user_login`` / ``auth_failed``, and feature usage (``bulk_signing``, ...);
* business time, independent of ``--rate``: ``subscription_payment`` (new and recurring,
  per seat), ``user_signup``, ``quota_utilization`` per tenant and resource (every 15 s),
  ``subscription_active`` (every minute), ``security_violation`` (every 2 min) and the
  ``custom`` gauge ``signing_queue_depth`` (every 5 s).

CPU, memory, disk and network come from the API's resource monitor (:mod:`api.monitor`),
not from here. Tenant ids are readable slugs (``acme-legal``) instead of the platform's UUIDs,
so that alert texts stay readable.

Incidents repeat every 12 minutes of demo time (``--speed`` compresses it), each tripping one
default rule in ``rules/``::

    0:30-5:30  quota      a starter tenant's signature quota above 90 %   quota_exceeded
    1:00-4:00  errors     30 % of POST /api/v1/signatures fail (HSM down) high_error_rate
    5:00-8:00  latency    GET /api/v1/documents/{id} takes ~3 s           slow_response_time

The incident clock starts at a multiple of the window width, so a compressed incident still
covers whole windows. ``high_error_rate`` is critical: with the routing that ``qesmon up``
gives the notifier (:data:`NOTIFICATIONS_YAML`) it escalates after a minute unless
acknowledged.

Notifications: the demo starts a webhook receiver on loopback that prints every notice it
gets (``[notify] FIRING ...``) and points the platform's ``webhook`` receiver at it,
unless ``WEBHOOK_URL`` or an earlier ``/alerts/configure`` already set that receiver to
something else. On exit it switches its own configuration off again.

``--backfill 7d`` first writes the past period, ending where the current hour starts, into
the backfill shard (``settings.streams.backfill``; its own watermark, no rules), so that
business-intelligence views have history and live and backfilled windows never share an
hour. It is light on purpose (``--backfill-rate`` 0.05 request events per second of history
plus the business-time events: ~45,000 events for a week), because the pipeline aggregates
backfill and live traffic in the same worker and live alerts should not wait. It is skipped
when the backfill shard already holds entries (a second run would only be counted late).
``--seed`` makes the events the same from run to run (live events depend on the tick times
as well).

Modules: :mod:`.platform` (plans, tenants, endpoints), :mod:`.incidents` (the schedule),
:mod:`.traffic` (the event model, pure), :mod:`.notify` (receiver, webhook channel, routing),
:mod:`.run` (options, backfill, live loop), :mod:`.session` (what ``qesmon up`` needs).
"""

from __future__ import annotations

from cli.demo.incidents import CYCLE, INCIDENTS, Effects, Incident, Schedule
from cli.demo.notify import NOTIFICATIONS_YAML, WebhookReceiver, notifier_rules_dir
from cli.demo.platform import make_tenants
from cli.demo.run import DemoOptions, backfill_range, main, parse_period, run
from cli.demo.traffic import Ev, Traffic

__all__ = [
    "CYCLE",
    "INCIDENTS",
    "NOTIFICATIONS_YAML",
    "DemoOptions",
    "Effects",
    "Ev",
    "Incident",
    "Schedule",
    "Traffic",
    "WebhookReceiver",
    "backfill_range",
    "main",
    "make_tenants",
    "notifier_rules_dir",
    "parse_period",
    "run",
]
