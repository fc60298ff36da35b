"""The channel base class, config validation helpers and the HTTP status policy.

A channel is one module in this package with one :class:`Channel` subclass registered by
name (see :mod:`notifier.channels`). It knows three things: how to validate its config
(:meth:`Channel.validate`, raising :class:`ChannelError` naming the field), how to read it
from the environment (:meth:`Channel.from_settings`), and how to put a :class:`Message` on
the wire (:meth:`Channel.send`), raising :class:`DeliveryError` with ``retryable`` set by the
one policy in :func:`check_http` (2xx ok; 408, 429 and 5xx retried, 429 with its
Retry-After; any other status given up).
"""

from __future__ import annotations

import email.utils
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from notifier.clock import Clock, SystemClock
from notifier.secrets import resolve
from notifier.templating import Renderer, build_context
from qesmon.errors import ChannelError, DeliveryError
from qesmon.settings import ChannelSettings

ALL_KINDS = frozenset({"firing", "repeat", "escalated", "acknowledged", "resolved", "test"})


@dataclass(frozen=True, slots=True)
class Message:
    """One notification to send on one channel: a group of alerts of the same kind."""

    kind: str
    alerts: Sequence[Mapping[str, Any]]
    keys: Sequence[str]
    group_key: str = ""
    template_set: str | None = None

    def context(self) -> dict[str, Any]:
        return build_context(self.kind, self.alerts)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the receiver answered: protocol status (HTTP or SMTP) and a short detail."""

    status: int | None
    detail: str = ""


@dataclass(slots=True)
class SendEnv:
    """What a send needs besides the message: HTTP session, templates, the environment."""

    session: aiohttp.ClientSession
    renderer: Renderer
    clock: Clock = field(default_factory=SystemClock)
    environ: Mapping[str, str] | None = None


REGISTRY: dict[str, type[Channel]] = {}


def register(cls: type[Channel]) -> type[Channel]:
    """Class decorator: make a channel known by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


class Channel(ABC):
    """Base class of the notification channels.

    Subclasses set ``name``, ``secret_fields`` and implement ``validate`` and ``send``::

        @register
        class Slack(Channel):
            name = "slack"
            secret_fields = frozenset({"webhook_url"})
    """

    name: ClassVar[str]
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    #: False when every alert needs its own message (PagerDuty's dedup_key per alert)
    groupable: ClassVar[bool] = True
    #: notification kinds this channel is sent (acknowledged notices are not for every one)
    kinds: ClassVar[frozenset[str]] = ALL_KINDS

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @classmethod
    @abstractmethod
    def validate(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Normalise ``config``; raise ChannelError naming the first bad field."""

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        """The config given by environment variables, or None when they do not set one."""
        return None

    def resolved(self, environ: Mapping[str, str] | None) -> dict[str, Any]:
        """The config with ``${ENV}`` references in secret fields replaced (send time only)."""
        return {
            k: resolve(v, k, self.name, environ) if k in self.secret_fields else v
            for k, v in self.config.items()
        }

    @abstractmethod
    async def send(self, message: Message, env: SendEnv) -> SendResult:
        """Deliver ``message``; raise DeliveryError on failure."""

    # -- helpers for subclasses ------------------------------------------------------------

    def error(self, message: str, **kwargs: Any) -> DeliveryError:
        return DeliveryError(message, self.name, **kwargs)

    async def post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """POST and return ``(status, body)`` for a 2xx; raise DeliveryError otherwise."""
        hdrs = dict(headers or {})
        data: Any = None
        if json_body is not None:
            hdrs.setdefault("Content-Type", "application/json")
            data = orjson.dumps(json_body)
        elif form is not None:
            data = aiohttp.FormData(dict(form))
        try:
            async with session.post(
                url,
                data=data,
                headers=hdrs,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                check_http(self.name, resp.status, resp.headers, body)
                return resp.status, body
        except TimeoutError:
            raise self.error(f"no answer within {timeout:g} s", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise self.error(f"connection failed: {type(exc).__name__}", retryable=True) from None


def check_http(channel: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
    """Raise DeliveryError unless ``status`` is 2xx; decide whether a retry can help."""
    if 200 <= status < 300:
        return
    excerpt = body[:300].decode("utf-8", "replace").strip()
    text = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status == 429:
        raise DeliveryError(
            text, channel, status=status, retryable=True, retry_after=retry_after(headers, body)
        )
    if status >= 500 or status == 408:
        raise DeliveryError(text, channel, status=status, retryable=True)
    raise DeliveryError(text, channel, status=status, retryable=False)


def retry_after(headers: Mapping[str, str], body: bytes) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or a JSON ``retry_after``."""
    raw = headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw) if raw else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("retry_after"), int | float):
        return float(doc["retry_after"])
    return None


# -- config validation ---------------------------------------------------------------------


class Fields:
    """Reads a channel config field by field; every complaint names the field::

    f = Fields("slack", config)
    url = f.url("webhook_url")
    f.done()          # rejects fields nobody asked for
    """

    def __init__(self, channel: str, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise ChannelError("config must be a JSON object", channel)
        self.channel = channel
        self.config = config
        self.out: dict[str, Any] = {}

    def fail(self, field_name: str, problem: str) -> ChannelError:
        return ChannelError(f"field {field_name!r}: {problem}", self.channel)

    def _get(self, name: str, required: bool) -> Any:
        value = self.config.get(name)
        if value is None or value == "":
            if required:
                raise self.fail(name, "is required")
            return None
        return value

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._get(name, required)
        if value is None:
            value = default
        elif not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {type(value).__name__}")
        if value is not None:
            self.out[name] = value
        return value if value is None else str(value)

    def url(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.text(name, required=required, default=default)
        if value is not None and not _is_ref(value):
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise self.fail(name, "must be an http(s) URL or a ${ENV_NAME} reference")
        return value

    def number(self, name: str, default: float, *, lo: float, hi: float) -> float:
        value = self._get(name, False)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
        self.out[name] = value
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.config.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        self.out[name] = value
        return value

    def str_list(self, name: str, *, required: bool = False) -> list[str]:
        value = self._get(name, required)
        if value is None:
            return []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(name, "must be a list of strings (or a comma-separated string)")
        if required and not value:
            raise self.fail(name, "must not be empty")
        self.out[name] = value
        return value

    def str_map(self, name: str) -> dict[str, str]:
        value = self._get(name, False) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.fail(name, "must be an object of string to string")
        if value:
            self.out[name] = dict(value)
        return dict(value)

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.config.get(name, default)
        if value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
        self.out[name] = value
        return str(value)

    def done(self) -> dict[str, Any]:
        unknown = sorted(
            set(self.config)
            - set(self.out)
            - {k for k, v in self.config.items() if v is None or v == ""}
        )
        if unknown:
            raise self.fail(unknown[0], "is not a field of this channel")
        return self.out


def _is_ref(value: str) -> bool:
    return value.startswith("${") and value.endswith("}")
