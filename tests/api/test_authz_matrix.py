"""The authorization matrix, generated from the route table: every route × every kind of
credential × platform or tenant-scoped key, each answer checked against the route's policy.

Credentials: none, a bad key, an expired key, a revoked key, and a live viewer, responder
and admin key. The expected answer follows from the policy alone: 401 for anything that is
not a live key, 403 ``<policy>_required`` for a role below the route's, else the route's own
answer; a tenant-scoped key asking about another tenant gets 403 for reads, records and
receivers and 404 for that tenant's alerts (it cannot tell them from missing ones). The
platform and both tenants have a receiver ``webhook``: "own" is the key's own (a tenant key
cannot name the platform's at all), "other" is tenant B's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from aiohttp.test_utils import TestClient
from psycopg.types.json import Jsonb

from api.keys import ROLE_RANK, create_key_sync, hash_key, revoke_key_sync
from api.routes import ROUTES, Route
from tests.api.conftest import auth

TENANT = "tenant-a"
OTHER = "tenant-b"
ROLES = ("viewer", "responder", "admin")
CREDENTIALS = ("none", "bad", "expired", "revoked", *ROLES)
SCOPES = ("platform", TENANT)
HOOK = {"channel": "webhook", "enabled": False, "config": {"url": "http://127.0.0.1:9/hook"}}


@dataclass(frozen=True)
class Call:
    """One request against a route: whose data it is about (``own`` or ``other`` tenant)."""

    method: str
    path: str
    params: dict[str, str]
    body: Any


def _key(db: psycopg.Connection[Any], credential: str, scope: str) -> str | None:
    tenant = None if scope == "platform" else scope
    name = f"{credential} {scope}"
    if credential == "none":
        return None
    if credential == "bad":
        return "qes_" + "x" * 43
    if credential in ROLES:
        return create_key_sync(db, role=credential, tenant=tenant, name=name)
    key = create_key_sync(db, role="admin", tenant=tenant, name=name)
    row = db.execute("SELECT id FROM api_keys WHERE key_hash = %s", (hash_key(key),)).fetchone()
    assert row is not None
    if credential == "revoked":
        revoke_key_sync(db, int(row[0]))
    else:
        db.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", row
        )
    return key


def _alert(db: psycopg.Connection[Any], tenant: str) -> int:
    row = db.execute(
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, tenant_id,"
        " started_at, fired_at) VALUES (%s, 'r', 'R', 'warning', 'firing', %s, now(), now())"
        " RETURNING id",
        (f"authz-{tenant}", tenant),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _calls(route: Route, alerts: dict[str, int]) -> dict[str, Call]:
    """The requests made against ``route``: about the key's own data, and (where the route
    is about a tenant's data) about another tenant's."""
    path = route.path
    if "{alert_id}" in path:
        return {
            which: Call(route.method, path.replace("{alert_id}", str(alerts[which])), {}, None)
            for which in ("own", "other")
        }
    if path.endswith("/record"):
        body = {"name": "authz_probe", "value": 1}
        return {
            "own": Call(route.method, path, {}, body),
            "other": Call(route.method, path, {}, {**body, "tenant_id": OTHER}),
        }
    if path.endswith("/alerts/configure"):
        return {
            "own": Call(route.method, path, {}, HOOK),
            "other": Call(route.method, path, {}, {**HOOK, "tenant_id": OTHER}),
        }
    if path.endswith("/alerts/test"):
        return {
            "own": Call(route.method, path, {"channel": "webhook"}, None),
            "other": Call(route.method, path, {"channel": "webhook", "tenant_id": OTHER}, None),
        }
    if "{receiver}" in path:
        path = path.replace("{receiver}", "webhook")
        return {
            "own": Call(route.method, path, {}, None),
            "other": Call(route.method, path, {"tenant_id": OTHER}, None),
        }
    if route.policy != "public":
        return {
            "own": Call(route.method, path, {}, None),
            "other": Call(route.method, path, {"tenant_id": OTHER}, None),
        }
    return {"own": Call(route.method, path, {}, None)}


def _success(route: Route) -> set[int]:
    if route.path.endswith("/health"):
        return {200, 503}  # public; 503 when the pipeline is not running, as here
    return {202} if route.path.endswith("/record") else {200}


def expected(route: Route, credential: str, scope: str, which: str) -> tuple[set[int], str | None]:
    """The documented answer: statuses allowed and the error code (None for a success)."""
    if route.policy == "public":
        return _success(route), None
    if credential == "none":
        return {401}, "missing_api_key"
    if credential not in ROLES:
        return {401}, "invalid_api_key"
    if ROLE_RANK[credential] < ROLE_RANK[route.policy]:
        return {403}, f"{route.policy}_required"
    if scope != "platform" and which == "other":
        if "{alert_id}" in route.path:
            return {404}, "alert_not_found"
        return {403}, "tenant_forbidden"
    return _success(route), None


def _receivers(db: psycopg.Connection[Any]) -> None:
    """A disabled ``webhook`` receiver for the platform and for both tenants."""
    for tenant in ("", TENANT, OTHER):
        db.execute(
            "INSERT INTO receivers (tenant_id, name, channel, enabled, config)"
            " VALUES (%s, 'webhook', 'webhook', false, %s) ON CONFLICT DO NOTHING",
            (tenant, Jsonb(HOOK["config"])),
        )


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_route_answers_every_credential_as_its_policy_says(
    client: TestClient[Any, Any], db: psycopg.Connection[Any], route: Route
) -> None:
    alerts = {"own": _alert(db, TENANT), "other": _alert(db, OTHER)}
    keys = {(c, s): _key(db, c, s) for c in CREDENTIALS for s in SCOPES}
    calls = _calls(route, alerts)
    got: dict[tuple[str, str, str], tuple[int, str | None]] = {}
    want: dict[tuple[str, str, str], tuple[int, str | None]] = {}
    for (credential, scope), key in keys.items():
        for which, call in calls.items():
            _receivers(db)  # again: the DELETE route removes them
            resp = await client.request(
                call.method,
                call.path,
                params=call.params,
                json=call.body,
                headers=auth(key) if key else {},
            )
            body = await resp.json()
            code = body["error"]["code"] if 400 <= resp.status < 500 else None
            statuses, wanted_code = expected(route, credential, scope, which)
            got[(credential, scope, which)] = (resp.status, code)
            # the answer we got when it is one of the allowed ones, else the first allowed
            status = resp.status if resp.status in statuses else min(statuses)
            want[(credential, scope, which)] = (status, wanted_code)
    assert got == want
