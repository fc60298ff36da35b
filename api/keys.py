"""API keys: created once by ``qesmon keys create``, stored as SHA-256, looked up per request.

A key looks like ``qes_<43 url-safe chars>`` (256 random bits). Only its SHA-256 and its first
8 characters (to recognise it in lists) are stored; the key itself is printed once. A lookup
hashes the presented key and compares with :func:`hmac.compare_digest`, so neither the
comparison nor an early exit reveals how much of a guess was right::

    key = await create_key(conn, role="viewer", tenant="t-1", name="admin UI")
    principal = await lookup(conn, key)      # None when unknown or revoked
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

from qesmon.db import connect
from qesmon.errors import BadRequest
from qesmon.settings import Settings

ROLES = ("admin", "viewer")
KEY_PREFIX = "qes_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: key id and name, role, and the tenant the key is limited to (or None)."""

    key_id: int
    name: str
    role: str
    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def label(self) -> str:
        """How the caller appears in audit fields (``acknowledged_by``)."""
        return f"key:{self.key_id}" + (f" ({self.name})" if self.name else "")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _check(role: str, tenant: str | None, name: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if tenant is not None and (not tenant or len(tenant) > 200 or not tenant.isprintable()):
        raise BadRequest("tenant: must be 1-200 printable characters")
    if len(name) > 200:
        raise BadRequest("name: at most 200 characters")


def create_key_sync(
    conn: psycopg.Connection[Any], *, role: str, tenant: str | None = None, name: str = ""
) -> str:
    """Store a new key and return it (the only time it is ever visible)."""
    _check(role, tenant, name)
    key = new_key()
    conn.execute(
        "INSERT INTO api_keys (name, key_prefix, key_hash, role, tenant_id) "
        "VALUES (%s, %s, %s, %s, %s)",
        (name, key[: len(KEY_PREFIX) + 4], hash_key(key), role, tenant),
    )
    return key


async def lookup(conn: psycopg.AsyncConnection[Any], key: str) -> Principal | None:
    """The principal of a presented key, or None when it is unknown or revoked."""
    digest = hash_key(key)
    cur = await conn.execute(
        "SELECT id, name, role, tenant_id, key_hash, revoked_at FROM api_keys WHERE key_hash = %s",
        (digest,),
    )
    row = await cur.fetchone()
    # The index finds the row; compare_digest makes the final decision constant-time.
    if row is None or not hmac.compare_digest(str(row[4]), digest) or row[5] is not None:
        return None
    return Principal(int(row[0]), str(row[1]), str(row[2]), row[3])


def create_key_cli(settings: Settings, *, role: str, tenant: str | None, name: str) -> int:
    """``qesmon keys create``: create a key, print it once, store only its hash."""
    with connect(settings.database_url, autocommit=True) as conn:
        key = create_key_sync(conn, role=role, tenant=tenant, name=name)
    scope = f"tenant {tenant}" if tenant else "all tenants"
    print(key)
    print(
        f"# {role} key for {scope}; shown once, only its SHA-256 is stored. "
        "Use it as 'Authorization: Bearer <key>'.",
        flush=True,
    )
    return 0
