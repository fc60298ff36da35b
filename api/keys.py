"""API keys: created by ``qesmon keys create``, stored as SHA-256, looked up per request.

A key looks like ``qes_<43 url-safe chars>`` (256 random bits). Only its SHA-256 and its first
8 characters (to recognise it in lists) are stored; the key itself is printed once. A lookup
hashes the presented key and compares with :func:`hmac.compare_digest`, so neither the
comparison nor an early exit reveals how much of a guess was right::

    key = create_key_sync(conn, role="viewer", tenant="t-1", name="admin UI",
                          expires_in=timedelta(days=90))
    principal = await lookup(conn, key)      # None when unknown, revoked or expired

Roles, each allowed what the one before it is: ``viewer`` reads, ``responder`` also
acknowledges and resolves alerts, ``admin`` also records events and configures and tests
channels. Lifecycle: ``keys list`` (never a secret, only the stored prefix), ``keys revoke ID``,
``keys rotate ID`` (a new secret for the same id, role, tenant, name and expiry; the old
secret is refused from then on).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from qesmon.db import connect
from qesmon.errors import BadRequest
from qesmon.settings import Settings

ROLES = ("admin", "responder", "viewer")
#: Each role may do what every role of a lower rank may.
ROLE_RANK = {"viewer": 0, "responder": 1, "admin": 2}
KEY_PREFIX = "qes_"
#: ``last_used_at`` is written when it is older than this, so not once per request.
TOUCH_INTERVAL = timedelta(minutes=1)

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: key id and name, role, the tenant the key is limited to (or None), and
    when the key expires (Unix seconds, or None)."""

    key_id: int
    name: str
    role: str
    tenant: str | None
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def has_role(self, role: str) -> bool:
        """Whether this key may do what ``role`` may (an admin may respond and view)."""
        return ROLE_RANK.get(self.role, -1) >= ROLE_RANK[role]

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @property
    def label(self) -> str:
        """How the caller appears in audit fields (``acknowledged_by``)."""
        return f"key:{self.key_id}" + (f" ({self.name})" if self.name else "")

    @property
    def who(self) -> dict[str, Any]:
        """The caller as recorded in an alert's history and the audit log."""
        return {"key_id": self.key_id, "key_name": self.name, "role": self.role}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One row of ``keys list``: everything about a key but its secret."""

    id: int
    prefix: str
    role: str
    tenant: str | None
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _stored_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 4]


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w``, ``30m``, ``3600s`` as a timedelta (a ValueError otherwise)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found.group(1)) == 0:
        raise ValueError(
            f"{text!r} is not a duration: a positive number and a unit, e.g. 90d, 12h, 2w, 30m"
        )
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def _check(role: str, tenant: str | None, name: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if tenant is not None and (not tenant or len(tenant) > 200 or not tenant.isprintable()):
        raise BadRequest("tenant: must be 1-200 printable characters")
    if len(name) > 200:
        raise BadRequest("name: at most 200 characters")


def create_key_sync(
    conn: psycopg.Connection[Any],
    *,
    role: str,
    tenant: str | None = None,
    name: str = "",
    expires_in: timedelta | None = None,
) -> str:
    """Store a new key and return it (the only time it is ever visible)."""
    _check(role, tenant, name)
    key = new_key()
    conn.execute(
        "INSERT INTO api_keys (name, key_prefix, key_hash, role, tenant_id, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, now() + %s)",
        (name, _stored_prefix(key), hash_key(key), role, tenant, expires_in),
    )
    return key


def list_keys_sync(conn: psycopg.Connection[Any]) -> list[KeyInfo]:
    """Every key, oldest first, without its hash."""
    rows = conn.execute(
        "SELECT id, key_prefix, role, tenant_id, name, created_at, expires_at, last_used_at,"
        " revoked_at FROM api_keys ORDER BY id"
    ).fetchall()
    return [KeyInfo(*row) for row in rows]


def revoke_key_sync(conn: psycopg.Connection[Any], key_id: int) -> bool:
    """Revoke key ``key_id``; False when there is no such key (revoking twice is fine)."""
    cur = conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING id",
        (key_id,),
    )
    return cur.fetchone() is not None


def rotate_key_sync(conn: psycopg.Connection[Any], key_id: int) -> str:
    """Give key ``key_id`` a new secret and return it; the old secret no longer matches.

    Raises BadRequest when there is no such key or it is revoked or expired (rotating must
    not bring a key back)."""
    key = new_key()
    cur = conn.execute(
        "UPDATE api_keys SET key_hash = %s, key_prefix = %s, rotated_at = now() WHERE id = %s"
        " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) RETURNING id",
        (hash_key(key), _stored_prefix(key), key_id),
    )
    if cur.fetchone() is None:
        raise BadRequest(f"key {key_id}: no such active key (unknown, revoked or expired)")
    return key


_PRINCIPAL = "SELECT id, name, role, tenant_id, extract(epoch FROM expires_at)::float8"
_ACTIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"


def _principal(row: tuple[Any, ...]) -> Principal:
    return Principal(int(row[0]), str(row[1]), str(row[2]), row[3], row[4])


async def lookup(conn: psycopg.AsyncConnection[Any], key: str) -> Principal | None:
    """The principal of a presented key, or None when it is unknown, revoked or expired.

    A found key's ``last_used_at`` is brought up to date when it is older than
    :data:`TOUCH_INTERVAL` (callers cache the answer, so this runs once per cache miss)."""
    digest = hash_key(key)
    cur = await conn.execute(
        f"{_PRINCIPAL}, key_hash, last_used_at < now() - %s OR last_used_at IS NULL"
        f" FROM api_keys WHERE key_hash = %s AND {_ACTIVE}",
        (TOUCH_INTERVAL, digest),
    )
    row = await cur.fetchone()
    # The index finds the row; compare_digest makes the final decision constant-time.
    if row is None or not hmac.compare_digest(str(row[5]), digest):
        return None
    if row[6]:
        await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = %s", (row[0],))
    return _principal(row)


async def lookup_id(conn: psycopg.AsyncConnection[Any], key_id: int) -> Principal | None:
    """The principal of key ``key_id`` (a live session's), or None unless it is active."""
    cur = await conn.execute(f"{_PRINCIPAL} FROM api_keys WHERE id = %s AND {_ACTIVE}", (key_id,))
    row = await cur.fetchone()
    return None if row is None else _principal(row)


# -- the CLI (qesmon keys ...) ---------------------------------------------------------------


def create_key_cli(
    settings: Settings,
    *,
    role: str,
    tenant: str | None,
    name: str,
    expires_in: timedelta | None = None,
) -> int:
    """``qesmon keys create``: create a key, print it once, store only its hash."""
    with connect(settings.database_url, autocommit=True) as conn:
        key = create_key_sync(conn, role=role, tenant=tenant, name=name, expires_in=expires_in)
    scope = f"tenant {tenant}" if tenant else "all tenants"
    until = "" if expires_in is None else f", expires {_when(datetime.now(UTC) + expires_in)}"
    print(key)
    print(
        f"# {role} key for {scope}{until}; shown once, only its SHA-256 is stored. "
        "Use it as 'Authorization: Bearer <key>'.",
        flush=True,
    )
    return 0


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def list_keys_cli(settings: Settings) -> int:
    """``qesmon keys list``: one line per key, with its stored prefix, never its secret."""
    with connect(settings.database_url, autocommit=True) as conn:
        keys = list_keys_sync(conn)
    now = datetime.now(UTC)
    header = ("ID", "PREFIX", "ROLE", "TENANT", "STATUS", "CREATED", "EXPIRES", "LAST USED", "NAME")
    lines = [header] + [
        (
            str(k.id),
            k.prefix + "...",
            k.role,
            k.tenant or "(all)",
            k.status(now),
            _when(k.created_at),
            _when(k.expires_at),
            _when(k.last_used_at),
            k.name,
        )
        for k in keys
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1])
    return 0


def revoke_key_cli(settings: Settings, key_id: int) -> int:
    """``qesmon keys revoke ID``: 0 when revoked, 1 when there is no such key."""
    with connect(settings.database_url, autocommit=True) as conn:
        found = revoke_key_sync(conn, key_id)
    if not found:
        print(f"qesmon keys revoke: no key with id {key_id}", flush=True)
        return 1
    print(f"# key {key_id} revoked; running API processes refuse it within 10 s.", flush=True)
    return 0


def rotate_key_cli(settings: Settings, key_id: int) -> int:
    """``qesmon keys rotate ID``: print the new secret once; 1 when the key is not active."""
    try:
        with connect(settings.database_url, autocommit=True) as conn:
            key = rotate_key_sync(conn, key_id)
    except BadRequest as exc:
        print(f"qesmon keys rotate: {exc}", flush=True)
        return 1
    print(key)
    print(
        f"# new secret for key {key_id} (same role, tenant, name and expiry), shown once; "
        "the old secret is refused from now on (within 10 s by running API processes).",
        flush=True,
    )
    return 0
