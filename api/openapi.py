"""The OpenAPI 3 document of the REST API, written as data next to the route table.

``tests/api/test_openapi.py`` checks that every route of ``api.routes.ROUTES`` is documented
here and every path here is routed, and schemathesis checks the answers against the schemas.
"""

from __future__ import annotations

import copy
from typing import Any

P = "/api/v1/metrics"

NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
NNUM = {"type": ["number", "null"]}
TIME = {"type": "string", "format": "date-time"}
NTIME = {"type": ["string", "null"], "format": "date-time"}
OBJ = {"type": "object"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


ERROR = obj({"error": obj({"code": STR, "message": STR})})


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


TENANT = _q(
    "tenant_id",
    {"type": "string", "minLength": 1, "maxLength": 200},
    "Only this tenant. A tenant-scoped key always reads its own tenant; asking for "
    "another one is 403.",
)
DAYS_7 = _q(
    "days",
    {"type": "integer", "minimum": 1, "maximum": 365, "default": 7},
    "Length of the period in days, ending now.",
)
DAYS_30 = _q(
    "days",
    {"type": "integer", "minimum": 1, "maximum": 365, "default": 30},
    "Length of the period in days, ending now.",
)
HOURS = _q(
    "hours",
    {"type": "integer", "minimum": 1, "maximum": 744, "default": 24},
    "Length of the period in hours, ending now (points per minute when <= 3).",
)
ALERT_ID = {
    "name": "alert_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid parameter or body (the message names it)",
        401: "Missing, unknown, revoked or expired API key",
        403: "Key lacks the role or tenant",
        404: "No such alert or receiver",
        409: "The tenant has RECEIVERS_PER_TENANT receivers already (too_many_receivers)",
        413: "Body larger than 1 MiB",
        503: "Database or Redis unavailable, or every report connection busy (reports_busy)",
        504: "The report's query ran past API_REPORT_STATEMENT_TIMEOUT_SECONDS (report_timeout)",
    }
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def _ok(schema: dict[str, Any], description: str, status: int = 200) -> dict[str, Any]:
    return {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


PERIOD_DAYS = obj({"start": TIME, "end": TIME, "days": INT})
ALERT = obj(
    {
        "id": INT,
        "fingerprint": STR,
        "rule_id": STR,
        "rule_name": STR,
        "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
        "state": {"type": "string", "enum": ["pending", "firing", "resolved"]},
        "tenant_id": NSTR,
        "labels": OBJ,
        "annotations": OBJ,
        "value": NNUM,
        "started_at": TIME,
        "fired_at": NTIME,
        "resolved_at": NTIME,
        "acknowledged_at": NTIME,
        "acknowledged_by": NSTR,
    }
)
RECOMMENDATION = obj(
    {
        "type": STR,
        "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
        "message": STR,
        "metric": STR,
        "value": NUM,
        "threshold": NUM,
    },
)
DASHBOARD = obj(
    {
        "tenant_id": NSTR,
        "period": PERIOD_DAYS,
        "business_metrics": obj(
            {
                "revenue": obj({"total": NUM, "new": NUM, "recurring": NUM}),
                "usage": obj({"signatures": NUM, "documents": NUM}),
                "activity": obj({"active_users": INT, "new_users": INT}),
            }
        ),
        "performance_metrics": obj(
            {
                "avg_response_time": {**NUM, "description": "mean http_request duration, seconds"},
                "error_rate": {**NUM, "description": "failed requests, percent"},
                "throughput": {**NUM, "description": "requests per second over the period"},
                "uptime": {
                    **NUM,
                    "description": "percent of the period outside rollup windows whose "
                    "error rate was >= 5 % (1 h windows for closed hours, 1 min/10 s after)",
                },
            }
        ),
        "alerts": obj({"active_count": INT, "alerts": arr(ALERT)}),
        "recommendations": arr(RECOMMENDATION),
    }
)
QUANTS = {"p50": NNUM, "p95": NNUM, "p99": NNUM}
PERFORMANCE = obj(
    {
        "tenant_id": NSTR,
        "period": obj({"start": TIME, "end": TIME, "hours": INT, "step_seconds": INT}),
        "summary": obj(
            {
                "count": INT,
                "errors": INT,
                "error_rate": NUM,
                "throughput": NUM,
                "avg_response_time": NNUM,
                **QUANTS,
            }
        ),
        "timeline": arr(
            obj({"time": TIME, "count": INT, "error_rate": NUM, "throughput": NUM, **QUANTS})
        ),
        "slowest_endpoints": arr(
            obj(
                {
                    "service": STR,
                    "endpoint": STR,
                    "method": STR,
                    "count": INT,
                    "avg": NNUM,
                    "max": NNUM,
                    "error_rate": NUM,
                    "slow_requests": INT,
                    **QUANTS,
                }
            )
        ),
        "slow_requests": obj(
            {
                "threshold_seconds": NUM,
                "count": INT,
                "share_percent": NUM,
                "by_endpoint": arr(
                    obj({"service": STR, "endpoint": STR, "method": STR, "count": INT})
                ),
            }
        ),
        "resources": {
            "type": ["object", "null"],
            "properties": {
                "cpu": arr(OBJ),
                "memory": arr(OBJ),
                "disk": arr(OBJ),
                "network": arr(OBJ),
            },
        },
    }
)
BUSINESS = obj(
    {
        "tenant_id": NSTR,
        "period": PERIOD_DAYS,
        "revenue": obj(
            {
                "by_plan": arr(
                    obj(
                        {
                            "plan": STR,
                            "currency": STR,
                            "total": NUM,
                            "new": NUM,
                            "recurring": NUM,
                            "payments": INT,
                        }
                    )
                ),
                "by_currency": arr(obj({"currency": STR, "total": NUM})),
                "daily": arr(obj({"date": STR, "currency": STR, "amount": NUM})),
                "forecast": obj(
                    {
                        "method": STR,
                        "description": STR,
                        "horizon_days": INT,
                        "fitted_days": INT,
                        "by_currency": arr(
                            obj(
                                {
                                    "currency": STR,
                                    "next_period_total": NUM,
                                    "daily": arr(obj({"date": STR, "amount": NUM})),
                                    "backtest": obj(
                                        {"mae": NNUM, "mape_percent": NNUM, "days": INT}
                                    ),
                                }
                            )
                        ),
                    }
                ),
            }
        ),
        "users": obj(
            {
                "dau": INT,
                "wau": INT,
                "mau": INT,
                "new_users": INT,
                "daily": arr(obj({"date": STR, "active_users": INT, "new_users": INT})),
                "retention": arr(
                    obj(
                        {
                            "signup_date": STR,
                            "size": INT,
                            "day_1_percent": NNUM,
                            "day_7_percent": NNUM,
                        }
                    )
                ),
            }
        ),
        "features": obj(
            {
                "features": arr(obj({"feature": STR, "uses": INT, "users": INT, "tenants": INT})),
                "by_tenant": arr(
                    obj(
                        {
                            "feature": STR,
                            "tenant_id": NSTR,
                            "uses": INT,
                            "users": INT,
                            "adoption_percent": NNUM,
                        }
                    )
                ),
            }
        ),
    }
)
HEALTH = obj(
    {
        "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
        "time": NUM,
        "checks": obj(
            {
                k: obj({"ok": {"type": "boolean"}})
                for k in ("redis", "database", "pipeline", "notifier", "rules")
            }
        ),
        # what `qesmon up` restarted; informative, never the reason for a 503
        "supervisor": obj(
            {"running": {"type": "boolean"}},
            {
                "restarts": INT,
                "warning": STR,
                "heartbeat_age_seconds": NNUM,
                "children": {"type": "object", "additionalProperties": OBJ},
            },
        ),
    }
)
RECORD_BODY = {
    "type": "object",
    "required": ["name", "value"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$", "maxLength": 200},
        "value": {"type": "number"},
        "type": {
            "type": "string",
            "enum": [
                "revenue",
                "feature_usage",
                "business_event",
                "performance",
                "usage",
                "system",
                "custom",
            ],
        },
        "metric_type": {"type": "string", "description": "alias of type (the seed's name)"},
        "tenant": STR,
        "tenant_id": {"type": "string", "description": "alias of tenant"},
        "user": STR,
        "user_id": {"type": "string", "description": "alias of user"},
        "labels": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "maxProperties": 32,
        },
        "ts": {"type": ["number", "string"], "description": "Unix seconds or RFC 3339"},
        "timestamp": {"type": ["number", "string"], "description": "alias of ts"},
        "success": {"type": "boolean"},
    },
}
RECEIVER_NAME = {
    "type": "string",
    "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$",
    "description": "A tenant's receiver name (default: the channel type); the platform's "
    "receivers are named after their channel type",
}
CONFIGURE_BODY = {
    "type": "object",
    "required": ["channel"],
    "additionalProperties": False,
    "properties": {
        "channel": STR,
        "enabled": {"type": "boolean", "default": True},
        "config": OBJ,
        "receiver": RECEIVER_NAME,
        "tenant_id": {
            **STR,
            "description": "Owner: a tenant-scoped key's own tenant always; a platform key's "
            "receivers when absent",
        },
    },
}
RECEIVER_OWNER = _q(
    "tenant_id",
    {"type": "string", "maxLength": 200},
    "Owner of the receiver (a tenant-scoped key: its own tenant, always; absent: the platform)",
)
RECEIVER = obj(
    {
        "receiver": STR,
        "tenant_id": NSTR,
        "channel": STR,
        "enabled": {"type": "boolean"},
        "source": NSTR,
        "config": OBJ,
        "configured": {"type": "boolean"},
    }
)
HEALTH_OP = {
    "summary": "Health of Redis, TimescaleDB, pipeline, notifier and rule files",
    "security": [],
    "responses": {
        **_ok(HEALTH, "Everything healthy"),
        "503": {
            "description": "Something is unhealthy (see checks)",
            "content": {"application/json": {"schema": HEALTH}},
        },
    },
}
ALERT_ACTION = {
    "x-required-role": "responder",
    "parameters": [ALERT_ID],
    "responses": {**_ok(OBJ, "The alert after the action"), **_errors(400, 401, 403, 404, 503)},
}

PATHS: dict[str, dict[str, Any]] = {
    f"{P}/dashboard": {
        "get": {
            "summary": "The dashboard: revenue, usage, activity, performance, alerts, advice",
            "x-required-role": "viewer",
            "parameters": [DAYS_7, TENANT],
            "responses": {**_ok(DASHBOARD, "Dashboard"), **_errors(400, 401, 403, 503, 504)},
        }
    },
    f"{P}/business-intelligence": {
        "get": {
            "summary": "Revenue by plan and currency with forecast; DAU/WAU/MAU, retention; "
            "feature adoption",
            "x-required-role": "viewer",
            "parameters": [DAYS_30, TENANT],
            "responses": {
                **_ok(BUSINESS, "Business intelligence"),
                **_errors(400, 401, 403, 503, 504),
            },
        }
    },
    f"{P}/performance": {
        "get": {
            "summary": "Latency percentiles, error rate, throughput, slow endpoints, resources",
            "x-required-role": "viewer",
            "parameters": [HOURS, TENANT],
            "responses": {**_ok(PERFORMANCE, "Performance"), **_errors(400, 401, 403, 503, 504)},
        }
    },
    f"{P}/record": {
        "post": {
            "summary": "Record one event through the metrics stream (admin)",
            "x-required-role": "admin",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": RECORD_BODY}},
            },
            "responses": {
                **_ok(
                    obj({"accepted": {"type": "boolean"}, "stream": STR, "id": STR}),
                    "Queued in the stream",
                    202,
                ),
                **_errors(400, 401, 403, 413, 503),
            },
        }
    },
    f"{P}/health": {"get": HEALTH_OP, "post": HEALTH_OP},
    f"{P}/alerts": {
        "get": {
            "summary": "Alerts, most severe and newest first",
            "x-required-role": "viewer",
            "parameters": [
                _q("active_only", {"type": "boolean", "default": True}, "Only open alerts"),
                TENANT,
                _q(
                    "limit",
                    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    "At most this many",
                ),
            ],
            "responses": {
                **_ok(
                    obj(
                        {
                            "tenant_id": NSTR,
                            "active_only": {"type": "boolean"},
                            "count": INT,
                            "alerts": arr(ALERT),
                        }
                    ),
                    "Alerts",
                ),
                **_errors(400, 401, 403, 503),
            },
        }
    },
    f"{P}/alerts/{{alert_id}}/acknowledge": {
        "post": {
            "summary": "Acknowledge an alert (stops its escalation; responder or admin)",
            **ALERT_ACTION,
        }
    },
    f"{P}/alerts/{{alert_id}}/resolve": {
        "post": {"summary": "Resolve an alert by hand (responder or admin)", **ALERT_ACTION}
    },
    f"{P}/alerts/configure": {
        "post": {
            "summary": "Configure a receiver: the platform's one of a channel type, or a "
            "tenant's own (admin); secrets are never returned",
            "x-required-role": "admin",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CONFIGURE_BODY}},
            },
            "responses": {
                **_ok(RECEIVER, "The stored receiver, secrets masked"),
                **_errors(400, 401, 403, 409, 413, 503),
            },
        }
    },
    f"{P}/alerts/test": {
        "post": {
            "summary": "Send a real test message to a receiver (admin)",
            "x-required-role": "admin",
            "parameters": [
                {
                    "name": "channel",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 50},
                },
                _q("receiver", RECEIVER_NAME, "The receiver's name (default: the channel)"),
                RECEIVER_OWNER,
            ],
            "responses": {**_ok(OBJ, "The delivery result"), **_errors(400, 401, 403, 503)},
        }
    },
    f"{P}/alerts/receivers": {
        "get": {
            "summary": "Receivers, secrets masked: a tenant-scoped key sees its own only (admin)",
            "x-required-role": "admin",
            "parameters": [TENANT],
            "responses": {
                **_ok(
                    obj({"tenant_id": NSTR, "count": INT, "receivers": arr(RECEIVER)}),
                    "Receivers",
                ),
                **_errors(400, 401, 403, 503),
            },
        }
    },
    f"{P}/alerts/receivers/{{receiver}}": {
        "delete": {
            "summary": "Delete a receiver (for the platform's: its stored configuration) (admin)",
            "x-required-role": "admin",
            "parameters": [
                {"name": "receiver", "in": "path", "required": True, "schema": RECEIVER_NAME},
                RECEIVER_OWNER,
            ],
            "responses": {
                **_ok(
                    obj({"receiver": STR, "tenant_id": NSTR, "deleted": {"type": "boolean"}}),
                    "Deleted",
                ),
                **_errors(400, 401, 403, 404, 503),
            },
        }
    },
    "/api/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": _ok(OBJ, "OpenAPI 3.1 document"),
        }
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy each time)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qes-monitoring API",
            "version": "1",
            "description": "Metrics, analytics and alerts of the QES platform. "
            "Send 'Authorization: Bearer <key>' (qesmon keys create). Each operation's "
            "x-required-role is the least role it needs: viewer < responder < admin.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": copy.deepcopy(PATHS),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR},
        },
    }
