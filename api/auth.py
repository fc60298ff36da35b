"""Who may call what: ``Authorization: Bearer <key>`` checked against the ``api_keys`` table.

Each route declares a policy: ``public`` (health, the OpenAPI document), ``viewer`` (any valid
key) or ``admin``. A tenant-scoped key is limited to its tenant: :func:`scoped_tenant` answers
403 when such a key asks for another tenant, and gives its own tenant when none is asked for.
Looked-up keys are remembered for ``KeyCache.ttl`` seconds (revocation takes effect within
that time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.keys import Principal, hash_key, lookup
from qesmon.errors import Forbidden, Unauthorized

POLICIES = ("public", "viewer", "admin")
MAX_KEY_LEN = 200


@dataclass
class KeyCache:
    """Recent key look-ups by SHA-256 (unknown keys too, so guessing costs no DB query)."""

    ttl: float = 10.0
    max_entries: int = 10_000
    entries: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        found = self.entries.get(digest)
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    def put(self, digest: str, principal: Principal | None) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[digest] = (time.monotonic() + self.ttl, principal)


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized(
            "missing Authorization header: send 'Authorization: Bearer <key>'", "missing_api_key"
        )
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Authorization must be 'Bearer <key>'", "invalid_api_key")
    if len(key) > MAX_KEY_LEN:
        raise Unauthorized("API key is not valid", "invalid_api_key")
    return key


async def authenticate(
    header: str | None, pool: AsyncConnectionPool[Any], cache: KeyCache
) -> Principal:
    key = bearer(header)
    digest = hash_key(key)
    known, principal = cache.get(digest)
    if not known:
        async with pool.connection() as conn:
            principal = await lookup(conn, key)
        cache.put(digest, principal)
    if principal is None:
        raise Unauthorized("API key is not valid (unknown or revoked)", "invalid_api_key")
    return principal


def authorize(principal: Principal, policy: str) -> None:
    if policy == "admin" and not principal.is_admin:
        raise Forbidden("this endpoint needs an admin API key", "admin_required")


def scoped_tenant(principal: Principal | None, requested: str | None) -> str | None:
    """The tenant a request may read: the key's own when it is tenant-scoped."""
    if principal is None or principal.tenant is None:
        return requested
    if requested is not None and requested != principal.tenant:
        raise Forbidden("this API key is limited to its own tenant", "tenant_forbidden")
    return principal.tenant
