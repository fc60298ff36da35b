"""Live page sessions: a signed, expiring cookie that stands for an API key.

The browser cannot send headers with EventSource, so the page posts the key once and gets an
HttpOnly cookie holding ``v1.<key id>.<expiry>.<HMAC-SHA256>``, signed with a secret kept in
Redis (:meth:`api.live.hub.LiveHub.secret`), so that every API process and a restarted one
accept it. Each request checks the key behind the token again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from api.auth import KeyCache, authenticate
from api.keys import Principal, lookup_id
from api.live.hub import LIVE_HUB
from api.resources import KEY_CACHE, POOL
from qesmon.errors import Unauthorized

COOKIE = "qes_live"


def sign_session(secret: bytes, key_id: int, expires: float) -> str:
    body = f"{key_id}.{int(expires)}"
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"v1.{body}." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def verify_session(secret: bytes, token: str, now: float) -> int:
    """The key id of a valid, unexpired token; Unauthorized otherwise."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit() or not parts[2].isdigit():
        raise Unauthorized("session is not valid; log in again", "session_invalid")
    expected = sign_session(secret, int(parts[1]), int(parts[2]))
    if not hmac.compare_digest(expected, token):
        raise Unauthorized("session is not valid; log in again", "session_invalid")
    if int(parts[2]) < now:
        raise Unauthorized("session has expired; log in again", "session_expired")
    return int(parts[1])


async def _principal_by_id(
    pool: AsyncConnectionPool[Any], cache: KeyCache, key_id: int
) -> Principal:
    cache_key = f"id:{key_id}"
    known, principal = cache.get(cache_key)
    if not known:
        async with pool.connection() as conn:
            principal = await lookup_id(conn, key_id)
        cache.put(cache_key, principal)
    if principal is None:
        raise Unauthorized(
            "the API key of this session was revoked or has expired; log in again",
            "session_invalid",
        )
    return principal


async def live_principal(request: web.Request) -> Principal:
    """The caller: ``Authorization: Bearer`` when sent, else the session cookie."""
    app = request.app
    header = request.headers.get("Authorization")
    if header is not None:
        return await authenticate(header, app[POOL], app[KEY_CACHE])
    token = request.cookies.get(COOKIE)
    if not token:
        raise Unauthorized(
            "log in at /live, or send 'Authorization: Bearer <key>'", "missing_api_key"
        )
    key_id = verify_session(await app[LIVE_HUB].secret(), token, time.time())
    return await _principal_by_id(app[POOL], app[KEY_CACHE], key_id)
