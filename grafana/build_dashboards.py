"""Build the five provisioned Grafana dashboards (JSON) from the panel definitions below.

The JSON files in ``grafana/dashboards/qes-monitoring/`` are what Grafana loads; this script is
their source, so that every panel shares the same filters, resolution rule and honesty about
percentiles. After changing a panel::

    .venv/bin/python grafana/build_dashboards.py          # rewrite the JSON files
    .venv/bin/python grafana/build_dashboards.py --check  # exit 1 if they are out of date

SQL panels read the ``metrics_rollup`` view and the ``alerts`` tables (names in
``qesmon/vocabulary.py``). Each picks the rollup width from ``$time_range`` (the bucket size of
a graph): 10 s rows below a minute, 60 s rows below an hour, 3600 s rows from an hour up.
Percentiles cannot be merged in SQL (the sketches can, in the API), so percentile panels show
the largest window percentile in each bucket, which is an upper bound of the true one, and say
so in their title; averages and error rates are exact (sums of sums and counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards" / "qes-monitoring"

TSDB = {"type": "grafana-postgresql-datasource", "uid": "timescaledb"}
PROM = {"type": "prometheus", "uid": "prometheus"}

Json = dict[str, Any]

# ---------------------------------------------------------------- SQL snippets --

#: rollup width for the graph resolution $time_range
WIDTH = (
    "width_s = CASE WHEN '${time_range}'::interval >= interval '1 hour' THEN 3600 "
    "WHEN '${time_range}'::interval >= interval '1 minute' THEN 60 ELSE 10 END"
)
#: seconds in one graph bucket, to turn counts into rates
BUCKET_S = "extract(epoch FROM '${time_range}'::interval)"
TENANT = "tenant_id IN ($tenant_id)"
#: performance and system events may come without a tenant
TENANT_OR_NONE = "(tenant_id IS NULL OR tenant_id IN ($tenant_id))"
SERVICE = "labels->>'service' IN ($service)"
HOST = "labels->>'host' IN ($host)"
#: alerts of the selected tenants plus the ones that belong to no tenant
ALERT_TENANT = "(tenant_id = '' OR tenant_id IN ($tenant_id))"


def sql(text: str, **snippets: str) -> str:
    """Dedent a query and fill in ``{WIDTH}``-style snippets (Grafana's ``${x}`` untouched)."""
    out = textwrap.dedent(text).strip()
    for key, value in {"WIDTH": WIDTH, "BUCKET_S": BUCKET_S, **snippets}.items():
        out = out.replace("{" + key + "}", value)
    return out


# ---------------------------------------------------------------- panels --


def _target(raw_sql: str, fmt: str) -> Json:
    return {
        "refId": "A",
        "datasource": TSDB,
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": raw_sql,
    }


def _panel(kind: str, title: str, w: int, h: int, description: str, **extra: Any) -> Json:
    panel: Json = {"type": kind, "title": title, "description": description, "w": w, "h": h}
    panel.update(extra)
    return panel


def stat(title: str, raw_sql: str, unit: str = "short", description: str = "", w: int = 6) -> Json:
    return _panel(
        "stat",
        title,
        w,
        4,
        description,
        datasource=TSDB,
        targets=[_target(raw_sql, "table")],
        fieldConfig={"defaults": {"unit": unit, "decimals": 2}, "overrides": []},
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        },
    )


def series(
    title: str, raw_sql: str, unit: str = "short", description: str = "", w: int = 12
) -> Json:
    return _panel(
        "timeseries",
        title,
        w,
        8,
        description,
        datasource=TSDB,
        targets=[_target(raw_sql, "time_series")],
        fieldConfig={
            "defaults": {"unit": unit, "custom": {"drawStyle": "line", "spanNulls": False}},
            "overrides": [],
        },
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}
        },
    )


def table(title: str, raw_sql: str, description: str = "", w: int = 12, h: int = 8) -> Json:
    return _panel(
        "table",
        title,
        w,
        h,
        description,
        datasource=TSDB,
        targets=[_target(raw_sql, "table")],
        fieldConfig={"defaults": {}, "overrides": []},
        options={"showHeader": True, "cellHeight": "sm"},
    )


def bars(title: str, raw_sql: str, unit: str, description: str = "", w: int = 12) -> Json:
    return _panel(
        "bargauge",
        title,
        w,
        8,
        description,
        datasource=TSDB,
        targets=[_target(raw_sql, "table")],
        fieldConfig={
            "defaults": {
                "unit": unit,
                "min": 0,
                "max": 100,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "orange", "value": 80},
                        {"color": "red", "value": 90},
                    ],
                },
            },
            "overrides": [],
        },
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        },
    )


def prom(title: str, expr: str, legend: str, unit: str = "short", description: str = "") -> Json:
    return _panel(
        "timeseries",
        title,
        8,
        8,
        description,
        datasource=PROM,
        targets=[
            {"refId": "A", "datasource": PROM, "expr": expr, "legendFormat": legend, "range": True}
        ],
        fieldConfig={"defaults": {"unit": unit}, "overrides": []},
        options={"legend": {"displayMode": "list", "placement": "bottom"}},
    )


def open_alerts(tenant_filter: bool = True) -> Json:
    tenant = f"AND {ALERT_TENANT}" if tenant_filter else ""
    return table(
        "Open alerts (qesmon rules)",
        sql(
            """
            SELECT started_at AS "time", rule_name, severity, state,
                   NULLIF(tenant_id, '') AS tenant, value,
                   acknowledged_at IS NOT NULL AS acknowledged
            FROM alerts
            WHERE state <> 'resolved' AND severity IN ($severity) {TENANT}
            ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
                     started_at DESC
            LIMIT 100
            """,
            TENANT=tenant,
        ),
        "Pending and firing alerts of the qesmon rule engine, most severe first, whatever the "
        "time range. Acknowledge or resolve them through the REST API.",
        w=24,
    )


def alerts_started(tenant_filter: bool = True) -> Json:
    tenant = f"AND {ALERT_TENANT}" if tenant_filter else ""
    return series(
        "Alerts started, by severity",
        sql(
            """
            SELECT $__timeGroupAlias(started_at, $time_range), severity AS metric,
                   count(*) AS alerts
            FROM alerts
            WHERE $__timeFilter(started_at) AND severity IN ($severity) {TENANT}
            GROUP BY 1, 2
            ORDER BY 1
            """,
            TENANT=tenant,
        ),
        description="Alert episodes (pending or firing) started in each bucket.",
    )


# ---------------------------------------------------------------- variables --


def _all() -> Json:
    return {"selected": True, "text": ["All"], "value": ["$__all"]}


def query_var(name: str, label: str, query: str) -> Json:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": TSDB,
        "definition": query,
        "query": query,
        "refresh": 1,
        "multi": True,
        "includeAll": True,
        "current": _all(),
        "options": [],
        "sort": 1,
        "hide": 0,
    }


TENANT_VAR = query_var(
    "tenant_id", "Tenant", "SELECT DISTINCT tenant_id FROM series WHERE tenant_id <> '' ORDER BY 1"
)
SERVICE_VAR = query_var(
    "service",
    "Service",
    "SELECT DISTINCT labels->>'service' FROM series "
    "WHERE name = 'http_request' AND labels->>'service' IS NOT NULL ORDER BY 1",
)
HOST_VAR = query_var(
    "host",
    "Host",
    "SELECT DISTINCT labels->>'host' FROM series "
    "WHERE type = 'system' AND labels->>'host' IS NOT NULL ORDER BY 1",
)
_SEVERITIES = ("critical", "warning", "info")
SEVERITY_VAR: Json = {
    "type": "custom",
    "name": "severity",
    "label": "Severity",
    "query": ",".join(_SEVERITIES),
    "multi": True,
    "includeAll": True,
    "current": _all(),
    "options": [{"selected": False, "text": s, "value": s} for s in ("All", *_SEVERITIES)],
    "hide": 0,
}
SEVERITY_VAR["options"][0].update(selected=True, value="$__all")
_RESOLUTIONS = ("10s", "1m", "5m", "15m", "1h", "6h", "1d")
TIME_RANGE_VAR: Json = {
    "type": "interval",
    "name": "time_range",
    "label": "Resolution",
    "description": "Bucket size of the graphs; also picks the rollup width (10 s, 1 min, 1 h).",
    "query": ",".join(_RESOLUTIONS),
    "auto": True,
    "auto_count": 100,
    "auto_min": "1m",
    "refresh": 2,
    "current": {"selected": True, "text": "auto", "value": "$__auto_interval_time_range"},
    "options": [
        {"selected": True, "text": "auto", "value": "$__auto_interval_time_range"},
        *({"selected": False, "text": r, "value": r} for r in _RESOLUTIONS),
    ],
    "hide": 0,
}


def alert_annotation(tenant_filter: bool = True) -> Json:
    tenant = f"AND {ALERT_TENANT}" if tenant_filter else ""
    return {
        "name": "Alerts",
        "datasource": TSDB,
        "enable": True,
        "iconColor": "red",
        "target": {
            "refId": "Anno",
            "datasource": TSDB,
            "editorMode": "code",
            "format": "table",
            "rawQuery": True,
            "rawSql": sql(
                """
                SELECT fired_at AS "time", resolved_at AS timeend,
                       rule_name || ' (' || severity || ')' AS text, severity AS tags
                FROM alerts
                WHERE fired_at IS NOT NULL AND $__timeFilter(fired_at)
                  AND severity IN ($severity) {TENANT}
                ORDER BY 1
                """,
                TENANT=tenant,
            ),
        },
    }


# ---------------------------------------------------------------- dashboards --


def business_overview() -> Json:
    revenue = "name = 'subscription_payment' AND type = 'revenue'"
    base = "$__timeFilter(bucket) AND {WIDTH} AND " + TENANT
    panels = [
        stat(
            "Revenue by currency",
            sql(
                f"""
                SELECT labels->>'currency' AS currency, sum(sum) AS revenue
                FROM metrics_rollup
                WHERE {revenue} AND {base}
                GROUP BY 1
                ORDER BY 1
                """
            ),
            "none",
            "Sum of subscription payments in the time range, one value per currency "
            "(amounts in different currencies are never added).",
        ),
        stat(
            "New users",
            sql(
                f"""
                SELECT sum(count) AS "new users"
                FROM metrics_rollup
                WHERE name = 'user_signup' AND {base}
                """
            ),
            description="user_signup events in the time range.",
        ),
        stat(
            "Signatures created",
            sql(
                f"""
                SELECT sum(sum) AS signatures
                FROM metrics_rollup
                WHERE name = 'signatures_created' AND {base}
                """
            ),
        ),
        stat(
            "Active subscriptions (latest window)",
            sql(
                f"""
                SELECT sum(latest) AS subscriptions
                FROM (
                    SELECT DISTINCT ON (tenant_id, labels->>'plan') max AS latest
                    FROM metrics_rollup
                    WHERE name = 'subscription_active' AND {base}
                    ORDER BY tenant_id, labels->>'plan', bucket DESC
                ) latest_per_tenant_and_plan
                """
            ),
            description="Sum over tenants and plans of the latest reported count.",
        ),
        series(
            "Revenue by plan and currency",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       (labels->>'plan') || ' ' || (labels->>'currency') AS metric,
                       sum(sum) AS revenue
                FROM metrics_rollup
                WHERE {revenue} AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        series(
            "Revenue: new vs recurring",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       (labels->>'kind') || ' ' || (labels->>'currency') AS metric,
                       sum(sum) AS revenue
                FROM metrics_rollup
                WHERE {revenue} AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        series(
            "Sign-ups and logins",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), name AS metric,
                       sum(count) AS events
                FROM metrics_rollup
                WHERE name IN ('user_signup', 'user_login') AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        series(
            "Active users per tenant (peak distinct users of one rollup window)",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), tenant_id AS metric,
                       max(distinct_users) AS users
                FROM metrics_rollup
                WHERE name = 'user_login' AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            description="Distinct users cannot be added across windows in SQL; this is the "
            "largest single-window count in each bucket. Daily/weekly/monthly active users "
            "(merged sketches) come from the business-intelligence endpoint.",
        ),
        series(
            "Active subscriptions by plan",
            sql(
                f"""
                SELECT "time", plan AS metric, sum(per_tenant) AS subscriptions
                FROM (
                    SELECT $__timeGroup(bucket, $time_range) AS "time", tenant_id,
                           labels->>'plan' AS plan,
                           sum(sum) / nullif(sum(count), 0) AS per_tenant
                    FROM metrics_rollup
                    WHERE name = 'subscription_active' AND {base}
                    GROUP BY 1, 2, 3
                ) by_tenant
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            description="Average reported count per tenant in each bucket, summed over tenants.",
        ),
        series(
            "Usage trends: signatures by level, documents",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       CASE WHEN name = 'signatures_created'
                            THEN 'signatures ' || coalesce(labels->>'level', 'unknown')
                            ELSE 'documents' END AS metric,
                       sum(sum) AS count
                FROM metrics_rollup
                WHERE name IN ('signatures_created', 'documents_uploaded') AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        open_alerts(),
    ]
    return dashboard(
        "qes-business-overview",
        "Business Overview",
        ["business"],
        panels,
        [TENANT_VAR, TIME_RANGE_VAR, SEVERITY_VAR],
    )


def system_performance() -> Json:
    http = (
        "name = 'http_request' AND type = 'performance' AND $__timeFilter(bucket) AND {WIDTH} "
        f"AND {SERVICE} AND {TENANT_OR_NONE}"
    )
    panels = [
        stat(
            "Requests",
            sql(f"SELECT sum(count) AS requests FROM metrics_rollup WHERE {http}"),
        ),
        stat(
            "Error rate",
            sql(
                f"""
                SELECT 100.0 * sum(errors) / nullif(sum(count), 0) AS "error rate"
                FROM metrics_rollup
                WHERE {http}
                """
            ),
            "percent",
        ),
        stat(
            "Average response time",
            sql(
                f"""
                SELECT sum(sum) / nullif(sum(count), 0) AS "avg"
                FROM metrics_rollup
                WHERE {http}
                """
            ),
            "s",
        ),
        stat(
            "p95 response time, upper bound",
            sql(f'SELECT max(p95) AS "p95 (upper bound)" FROM metrics_rollup WHERE {http}'),
            "s",
            "The largest p95 of any series and window: the true p95 is at most this. "
            "Exact merged percentiles: GET /api/v1/metrics/performance.",
        ),
        series(
            "Response time: average, and p50/p95/p99 upper bounds",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       sum(sum) / nullif(sum(count), 0) AS "avg",
                       max(p50) AS "p50 (upper bound)",
                       max(p95) AS "p95 (upper bound)",
                       max(p99) AS "p99 (upper bound)"
                FROM metrics_rollup
                WHERE {http}
                GROUP BY 1
                ORDER BY 1
                """
            ),
            "s",
            "Average: exact. Percentiles: largest window percentile in the bucket (an upper "
            "bound; percentiles are not averaged). Exact merged values are in the API.",
        ),
        series(
            "p95 by service and endpoint (upper bound)",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       (labels->>'service') || ' ' || (labels->>'endpoint') AS metric,
                       max(p95) AS "p95 (upper bound)"
                FROM metrics_rollup
                WHERE {http}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "s",
        ),
        series(
            "Error rate by service",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), labels->>'service' AS metric,
                       100.0 * sum(errors) / nullif(sum(count), 0) AS "error rate"
                FROM metrics_rollup
                WHERE {http}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "percent",
        ),
        series(
            "Throughput by service",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), labels->>'service' AS metric,
                       sum(count) / {{BUCKET_S}} AS "req/s"
                FROM metrics_rollup
                WHERE {http}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "reqps",
        ),
        table(
            "Slowest endpoints",
            sql(
                f"""
                SELECT labels->>'service' AS service, labels->>'endpoint' AS endpoint,
                       labels->>'method' AS method, sum(count) AS requests,
                       sum(sum) / nullif(sum(count), 0) AS "avg (s)",
                       max(p95) AS "p95 upper bound (s)", max(max) AS "max (s)",
                       100.0 * sum(errors) / nullif(sum(count), 0) AS "errors (%)"
                FROM metrics_rollup
                WHERE {http}
                GROUP BY 1, 2, 3
                ORDER BY 5 DESC NULLS LAST
                LIMIT 15
                """
            ),
        ),
        series(
            "Database queries and external APIs (average)",
            sql(
                """
                SELECT $__timeGroupAlias(bucket, $time_range),
                       name || ' ' || coalesce(labels->>'provider', labels->>'service', '')
                         || ' ' || coalesce(labels->>'operation', '') AS metric,
                       sum(sum) / nullif(sum(count), 0) AS "avg"
                FROM metrics_rollup
                WHERE name IN ('db_query', 'external_api') AND type = 'performance'
                  AND $__timeFilter(bucket) AND {WIDTH} AND {TENANT}
                GROUP BY 1, 2
                ORDER BY 1
                """,
                TENANT=TENANT_OR_NONE,
            ),
            "s",
        ),
        alerts_started(),
        series(
            "Notification deliveries by channel and status",
            sql(
                """
                SELECT $__timeGroupAlias(created_at, $time_range),
                       channel || ' ' || status AS metric, count(*) AS attempts
                FROM deliveries
                WHERE $__timeFilter(created_at)
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            description="Every delivery attempt of the qesmon notifier (retries included).",
        ),
        open_alerts(),
    ]
    return dashboard(
        "qes-system-performance",
        "System Performance",
        ["performance"],
        panels,
        [SERVICE_VAR, TENANT_VAR, TIME_RANGE_VAR, SEVERITY_VAR],
    )


def infrastructure() -> Json:
    system = "type = 'system' AND $__timeFilter(bucket) AND {WIDTH} AND " + HOST

    def gauge_series(title: str, name: str, label: str) -> Json:
        return series(
            title,
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), {label} AS metric,
                       sum(sum) / nullif(sum(count), 0) AS "avg",
                       max(max) AS "max"
                FROM metrics_rollup
                WHERE name = '{name}' AND {system}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "percent",
        )

    def peak(title: str, name: str) -> Json:
        return stat(
            title,
            sql(f"SELECT max(max) AS peak FROM metrics_rollup WHERE name = '{name}' AND {system}"),
            "percent",
        )

    panels = [
        stat(
            "Hosts reporting",
            sql(
                f"SELECT count(DISTINCT labels->>'host') AS hosts FROM metrics_rollup "
                f"WHERE {system}"
            ),
        ),
        peak("Peak CPU", "cpu_usage"),
        peak("Peak memory", "memory_usage"),
        peak("Fullest disk", "disk_usage"),
        gauge_series("CPU usage by host", "cpu_usage", "labels->>'host'"),
        gauge_series("Memory usage by host", "memory_usage", "labels->>'host'"),
        gauge_series(
            "Disk usage by host and mount",
            "disk_usage",
            "(labels->>'host') || ':' || (labels->>'mount')",
        ),
        series(
            "Network throughput by host",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       (labels->>'host') || CASE name WHEN 'network_bytes_sent' THEN ' sent'
                                                     ELSE ' received' END AS metric,
                       sum(sum) / {{BUCKET_S}} AS "bytes/s"
                FROM metrics_rollup
                WHERE name IN ('network_bytes_sent', 'network_bytes_recv') AND {system}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "Bps",
        ),
        table(
            "Latest sample per host",
            sql(
                f"""
                SELECT DISTINCT ON (labels->>'host', name, labels->>'mount')
                       bucket AS "time", labels->>'host' AS host, name,
                       coalesce(labels->>'mount', '') AS mount, max AS "latest window max"
                FROM metrics_rollup
                WHERE name IN ('cpu_usage', 'memory_usage', 'disk_usage') AND {system}
                ORDER BY labels->>'host', name, labels->>'mount', bucket DESC
                """
            ),
            w=24,
        ),
        prom(
            "Pipeline lag (Prometheus)",
            "sum(qes_pipeline_lag_entries)",
            "entries behind",
            description="Stream entries not yet read by the pipeline.",
        ),
        prom(
            "Pipeline heartbeat age (Prometheus)",
            "max(qes_pipeline_heartbeat_age_seconds)",
            "seconds",
            "s",
        ),
        prom(
            "Firing Prometheus alerts",
            'count by (alertname, severity) (ALERTS{alertstate="firing"})',
            "{{alertname}} ({{severity}})",
        ),
        open_alerts(tenant_filter=False),
    ]
    return dashboard(
        "qes-infrastructure",
        "Infrastructure",
        ["infrastructure"],
        panels,
        [HOST_VAR, TIME_RANGE_VAR, SEVERITY_VAR],
        tenant_alerts=False,
    )


def security() -> Json:
    base = "$__timeFilter(bucket) AND {WIDTH} AND " + TENANT

    def total(title: str, name: str) -> Json:
        return stat(
            title,
            sql(
                f"SELECT sum(count) AS events FROM metrics_rollup WHERE name = '{name}' AND {base}"
            ),
        )

    panels = [
        total("Authentication failures", "auth_failed"),
        total("Security violations", "security_violation"),
        stat(
            "Failed login ratio",
            sql(
                f"""
                SELECT 100.0 * sum(count) FILTER (WHERE name = 'auth_failed')
                       / nullif(sum(count), 0) AS "failed"
                FROM metrics_rollup
                WHERE name IN ('auth_failed', 'user_login') AND {base}
                """
            ),
            "percent",
            "auth_failed / (auth_failed + user_login).",
        ),
        stat(
            "Tenants with failures",
            sql(
                f"""
                SELECT count(DISTINCT tenant_id) AS tenants
                FROM metrics_rollup
                WHERE name = 'auth_failed' AND {base}
                """
            ),
        ),
        series(
            "Authentication failures by reason",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       coalesce(labels->>'reason', 'unknown') AS metric, sum(count) AS failures
                FROM metrics_rollup
                WHERE name = 'auth_failed' AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        series(
            "Security violations by kind",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       coalesce(labels->>'kind', 'unknown') AS metric, sum(count) AS violations
                FROM metrics_rollup
                WHERE name = 'security_violation' AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        series(
            "Failed login ratio by tenant",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), tenant_id AS metric,
                       100.0 * sum(count) FILTER (WHERE name = 'auth_failed')
                         / nullif(sum(count), 0) AS "failed"
                FROM metrics_rollup
                WHERE name IN ('auth_failed', 'user_login') AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "percent",
        ),
        table(
            "Tenants by authentication failures",
            sql(
                f"""
                SELECT tenant_id AS tenant,
                       sum(count) FILTER (WHERE name = 'auth_failed') AS "auth failures",
                       coalesce(sum(count) FILTER (WHERE name = 'security_violation'), 0)
                         AS violations,
                       coalesce(sum(count) FILTER (WHERE name = 'user_login'), 0) AS logins
                FROM metrics_rollup
                WHERE name IN ('auth_failed', 'security_violation', 'user_login') AND {base}
                GROUP BY 1
                HAVING sum(count) FILTER (WHERE name = 'auth_failed') > 0
                ORDER BY 2 DESC
                LIMIT 20
                """
            ),
        ),
        alerts_started(),
        table(
            "Alert state changes",
            sql(
                """
                SELECT e.at AS "time", a.rule_name, a.severity,
                       e.from_state || ' -> ' || e.to_state AS change, e.value,
                       NULLIF(a.tenant_id, '') AS tenant
                FROM alert_events e
                JOIN alerts a ON a.id = e.alert_id
                WHERE $__timeFilter(e.at) AND a.severity IN ($severity)
                  AND (a.tenant_id = '' OR a.tenant_id IN ($tenant_id))
                ORDER BY e.at DESC
                LIMIT 200
                """
            ),
        ),
        open_alerts(),
    ]
    return dashboard(
        "qes-security",
        "Security",
        ["security"],
        panels,
        [TENANT_VAR, TIME_RANGE_VAR, SEVERITY_VAR],
    )


def usage_analytics() -> Json:
    base = "$__timeFilter(bucket) AND {WIDTH} AND " + TENANT
    activity_types = "type IN ('usage', 'feature_usage', 'business_event', 'revenue')"
    panels = [
        series(
            "Feature usage",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), name AS metric,
                       sum(count) AS uses
                FROM metrics_rollup
                WHERE type = 'feature_usage' AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        table(
            "Feature adoption",
            sql(
                f"""
                SELECT name AS feature, sum(count) AS uses,
                       count(DISTINCT tenant_id) AS tenants,
                       max(distinct_users) AS "peak users in one window"
                FROM metrics_rollup
                WHERE type = 'feature_usage' AND {base}
                GROUP BY 1
                ORDER BY 2 DESC
                """
            ),
        ),
        bars(
            "Quota utilisation (latest window)",
            sql(
                f"""
                SELECT tenant || ' ' || resource AS quota, utilisation
                FROM (
                    SELECT DISTINCT ON (tenant_id, labels->>'resource')
                           tenant_id AS tenant, labels->>'resource' AS resource,
                           max AS utilisation
                    FROM metrics_rollup
                    WHERE name = 'quota_utilization' AND {base}
                    ORDER BY tenant_id, labels->>'resource', bucket DESC
                ) latest
                ORDER BY utilisation DESC
                LIMIT 30
                """
            ),
            "percent",
            "Largest reported utilisation in each tenant's latest window; 90% fires the "
            "quota alert.",
        ),
        series(
            "Quota utilisation by tenant and resource (max)",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range),
                       tenant_id || ' ' || (labels->>'resource') AS metric,
                       max(max) AS utilisation
                FROM metrics_rollup
                WHERE name = 'quota_utilization' AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            "percent",
        ),
        series(
            "Tenant activity (events)",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), tenant_id AS metric,
                       sum(count) AS events
                FROM metrics_rollup
                WHERE {activity_types} AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
            description="Business, usage, feature and revenue events per tenant.",
        ),
        series(
            "Signatures by tenant",
            sql(
                f"""
                SELECT $__timeGroupAlias(bucket, $time_range), tenant_id AS metric,
                       sum(sum) AS signatures
                FROM metrics_rollup
                WHERE name = 'signatures_created' AND {base}
                GROUP BY 1, 2
                ORDER BY 1
                """
            ),
        ),
        table(
            "Most active tenants",
            sql(
                f"""
                SELECT tenant_id AS tenant, sum(count) AS events,
                       coalesce(sum(sum) FILTER (WHERE name = 'signatures_created'), 0)
                         AS signatures,
                       coalesce(sum(sum) FILTER (WHERE name = 'documents_uploaded'), 0)
                         AS documents,
                       coalesce(sum(count) FILTER (WHERE type = 'feature_usage'), 0)
                         AS "feature uses",
                       max(distinct_users) AS "peak users in one window"
                FROM metrics_rollup
                WHERE {activity_types} AND {base}
                GROUP BY 1
                ORDER BY 2 DESC
                LIMIT 20
                """
            ),
        ),
        open_alerts(),
    ]
    return dashboard(
        "qes-usage-analytics",
        "Usage Analytics",
        ["usage"],
        panels,
        [TENANT_VAR, TIME_RANGE_VAR, SEVERITY_VAR],
    )


# ---------------------------------------------------------------- assembly --


def _layout(panels: list[Json]) -> list[Json]:
    """Place panels left to right on Grafana's 24-column grid, wrapping as needed."""
    x = y = row_h = 0
    out = []
    for number, panel in enumerate(panels, start=1):
        w, h = panel.pop("w"), panel.pop("h")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append({"id": number, "gridPos": {"x": x, "y": y, "w": w, "h": h}, **panel})
        x += w
        row_h = max(row_h, h)
    return out


def dashboard(
    uid: str,
    title: str,
    tags: list[str],
    panels: list[Json],
    variables: list[Json],
    tenant_alerts: bool = True,
) -> Json:
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "tags": ["qes-monitoring", *tags],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "1m",
        "links": [
            {
                "type": "dashboards",
                "tags": ["qes-monitoring"],
                "asDropdown": True,
                "title": "QES dashboards",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                alert_annotation(tenant_alerts),
            ]
        },
        "templating": {"list": variables},
        "panels": _layout(panels),
    }


DASHBOARDS = {
    "business-overview.json": business_overview,
    "system-performance.json": system_performance,
    "infrastructure.json": infrastructure,
    "security.json": security,
    "usage-analytics.json": usage_analytics,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run grafana/build_dashboards.py)", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'} {len(DASHBOARDS)} dashboards in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
