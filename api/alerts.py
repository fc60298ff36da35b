"""Reading the ``alerts`` table (written by the rules engine) for the API."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from api.store import Conn
from api.timefmt import iso

_COLUMNS = (
    "id, fingerprint, rule_id, rule_name, severity, state, tenant_id, labels, annotations, "
    "value, started_at, fired_at, resolved_at, acknowledged_at, acknowledged_by"
)
_SEVERITY_ORDER = "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"


def alert_json(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(row[0]),
        "fingerprint": row[1],
        "rule_id": row[2],
        "rule_name": row[3],
        "severity": row[4],
        "state": row[5],
        "tenant_id": row[6] or None,
        "labels": row[7],
        "annotations": row[8],
        "value": row[9],
        "started_at": iso(row[10]),
        "fired_at": iso(row[11]),
        "resolved_at": iso(row[12]),
        "acknowledged_at": iso(row[13]),
        "acknowledged_by": row[14],
    }


async def list_alerts(
    conn: Conn, *, tenant: str | None, active_only: bool, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """(number matching, the first ``limit`` of them, most severe and newest first)."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: dict[str, Any] = {"limit": limit}
    if active_only:
        conditions.append(sql.SQL("state <> 'resolved'"))
    if tenant is not None:
        conditions.append(sql.SQL("tenant_id = %(tenant)s"))
        params["tenant"] = tenant
    where = sql.SQL(" AND ").join(conditions)
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM alerts WHERE {}").format(where), params)
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    cur = await conn.execute(
        sql.SQL(
            "SELECT {cols} FROM alerts WHERE {where} ORDER BY {order}, started_at DESC, "
            "id DESC LIMIT %(limit)s"
        ).format(cols=sql.SQL(_COLUMNS), where=where, order=sql.SQL(_SEVERITY_ORDER)),
        params,
    )
    return total, [alert_json(r) for r in await cur.fetchall()]


async def alert_tenant(conn: Conn, alert_id: int) -> str | None:
    """The tenant of an alert ('' for none), or None when there is no such alert."""
    cur = await conn.execute("SELECT tenant_id FROM alerts WHERE id = %s", (alert_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])
