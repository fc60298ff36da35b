"""Who may call what: ``Authorization: Bearer <key>`` checked against the ``api_keys`` table.

Each route declares a policy: ``public`` (health, the OpenAPI document), ``viewer`` (any valid
key: reads), ``responder`` (acknowledge, resolve) or ``admin`` (record, configure and test
channels); a key of a higher role may do what a lower one may. A tenant-scoped key is limited
to its tenant: :func:`scoped_tenant` answers 403 when such a key asks for another tenant, and
gives its own tenant when none is asked for. An unknown, revoked or expired key is 401.

Looked-up keys are remembered for ``KeyCache.ttl`` seconds, so a revocation or rotation takes
effect within that time in a running API process.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.keys import ROLE_RANK, Principal, hash_key, lookup
from qesmon.errors import Forbidden, Unauthorized

POLICIES = ("public", *ROLE_RANK)
MAX_KEY_LEN = 200


@dataclass
class KeyCache:
    """Recent key look-ups by SHA-256 of the key: a bounded LRU of valid keys, and a separate
    bounded cache of unknown ones.

    Unknown keys are remembered too, so repeating a wrong key costs no DB query; they are
    kept apart, so a spray of random keys can only push out other unknown keys, never a
    valid key that is in use::

        cache = KeyCache(ttl=10.0)
        known, principal = cache.get(digest)   # (False, None) when not cached or stale
        cache.put(digest, principal)           # None for an unknown key
    """

    ttl: float = 10.0
    max_entries: int = 10_000
    max_misses: int = 10_000
    hits: OrderedDict[str, tuple[float, Principal]] = field(default_factory=OrderedDict)
    misses: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        now = time.monotonic()
        hit = self.hits.get(digest)
        if hit is not None:
            if hit[0] >= now and not hit[1].expired(time.time()):
                self.hits.move_to_end(digest)
                return True, hit[1]
            del self.hits[digest]
        miss = self.misses.get(digest)
        if miss is not None:
            if miss >= now:
                return True, None
            del self.misses[digest]
        return False, None

    def put(self, digest: str, principal: Principal | None) -> None:
        until = time.monotonic() + self.ttl
        if principal is None:
            self.hits.pop(digest, None)
            self.misses[digest] = until
            self.misses.move_to_end(digest)
            while len(self.misses) > self.max_misses:
                self.misses.popitem(last=False)
        else:
            self.misses.pop(digest, None)
            self.hits[digest] = (until, principal)
            self.hits.move_to_end(digest)
            while len(self.hits) > self.max_entries:
                self.hits.popitem(last=False)


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
        raise Unauthorized("API key is not valid (unknown, revoked or expired)", "invalid_api_key")
    return principal


def authorize(principal: Principal, policy: str) -> None:
    """Refuse (403) a key whose role is below the route's policy."""
    if policy == "public" or principal.has_role(policy):
        return
    needed = "an admin" if policy == "admin" else f"a {policy} or admin"
    raise Forbidden(f"this endpoint needs {needed} API key", f"{policy}_required")


def scoped_tenant(principal: Principal | None, requested: str | None) -> str | None:
    """The tenant a request may read: the key's own when it is tenant-scoped."""
    if principal is None or principal.tenant is None:
        return requested
    if requested is not None and requested != principal.tenant:
        raise Forbidden("this API key is limited to its own tenant", "tenant_forbidden")
    return principal.tenant
