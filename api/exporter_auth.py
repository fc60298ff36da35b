"""Who may scrape the exporter: a bearer token, basic-auth credentials, or both.

Prometheus sends either as its scrape config says (``authorization: {credentials_file: ...}``
or ``basic_auth``). Credentials are compared as SHA-256 digests with
:func:`hmac.compare_digest`, so neither their content nor their length shows in the time an
answer takes. Anything else (no header, another scheme, bad base64, wrong credentials) is the
same 401 with a ``WWW-Authenticate`` challenge for each configured scheme::

    auth = ScrapeAuth.from_settings(settings.api)      # None: nothing configured
    app = web.Application(middlewares=[auth.middleware] if auth else [])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from qesmon.settings import ApiSettings

REALM = "qesmon-exporter"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@dataclass(frozen=True)
class ScrapeAuth:
    """The digests of the accepted credentials; a request needs one of them."""

    bearer: bytes | None = None
    basic: bytes | None = None

    @classmethod
    def from_settings(cls, api: ApiSettings) -> ScrapeAuth | None:
        bearer, basic = api.metrics_bearer_token, api.metrics_basic_auth
        if bearer is None and basic is None:
            return None
        return cls(
            bearer=_digest(bearer.encode()) if bearer is not None else None,
            basic=_digest(basic.encode()) if basic is not None else None,
        )

    @property
    def schemes(self) -> str:
        """What the start-up log says a scrape needs."""
        return " or ".join(
            name for name, on in (("bearer token", self.bearer), ("basic auth", self.basic)) if on
        )

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value carries accepted credentials."""
        if header is None:
            return False
        scheme, _, param = header.strip().partition(" ")
        scheme, param = scheme.lower(), param.strip()
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives them back
        given = param.encode("utf-8", "surrogateescape")
        if scheme == "bearer" and self.bearer is not None:
            return hmac.compare_digest(_digest(given), self.bearer)
        if scheme == "basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(_digest(decoded), self.basic)
        return False

    def challenge(self) -> web.Response:
        headers: CIMultiDict[str] = CIMultiDict()
        if self.bearer is not None:
            headers.add("WWW-Authenticate", f'Bearer realm="{REALM}"')
        if self.basic is not None:
            headers.add("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        return web.Response(
            status=401,
            text=f"unauthorized: a scrape needs the exporter's {self.schemes}\n",
            headers=headers,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.allows(request.headers.get("Authorization")):
            return self.challenge()
        return await handler(request)


__all__ = ["ScrapeAuth"]
