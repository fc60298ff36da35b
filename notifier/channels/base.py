"""The channel base class, config validation helpers and the HTTP status policy.

A channel is one module in this package with one :class:`Channel` subclass registered by
name (see :mod:`notifier.channels`). It knows three things: how to validate its config
(:meth:`Channel.validate`, raising :class:`ChannelError` naming the field), how to read it
from the environment (:meth:`Channel.from_settings`), and how to put a :class:`Message` on
the wire (:meth:`Channel.send`), raising :class:`DeliveryError` with ``retryable`` set by the
one policy in :func:`check_http` (2xx ok; 408, 429 and 5xx retried, 429 with its
Retry-After; any other status given up, redirects included: channels do not follow them).
An error says the status and a short reason of ours, never the receiver's answer, and
connections go only where :mod:`notifier.outbound` allows (a refusal is not retried).
"""

from __future__ import annotations

import email.utils
import http
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from notifier import outbound
from notifier.clock import Clock, SystemClock
from notifier.secrets import DEFAULT_PREFIX, allowed, invalid, is_reference, resolve
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
    """What a send needs besides the message: HTTP session, templates, the environment.

    The session comes from :func:`notifier.outbound.session`: its guard decides where the
    channels may connect, over HTTP and SMTP alike."""

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

    Subclasses set ``name``, ``secret_fields`` (masked in answers and logs), ``references``
    (the fields that may hold a ``${NAME}`` reference, with what their value must be
    otherwise) and implement ``validate`` and ``send``::

        @register
        class Sms(Channel):
            name = "sms"
            secret_fields = frozenset({"auth_token"})
            references = {"auth_token": "the auth token"}

    A channel is built with the prefix its references may name (``SECRET_ENV_PREFIX``).
    """

    name: ClassVar[str]
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    #: field -> what it holds when not a reference; never a URL field, never header names
    references: ClassVar[Mapping[str, str]] = {}
    #: False when every alert needs its own message (PagerDuty's dedup_key per alert)
    groupable: ClassVar[bool] = True
    #: notification kinds this channel is sent (acknowledged notices are not for every one)
    kinds: ClassVar[frozenset[str]] = ALL_KINDS

    def __init__(self, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX) -> None:
        self.config = dict(config)
        self.secret_prefix = secret_prefix

    @classmethod
    @abstractmethod
    def validate(
        cls, config: Mapping[str, Any], secret_prefix: str = DEFAULT_PREFIX
    ) -> dict[str, Any]:
        """Normalise ``config``; raise ChannelError naming the first bad field."""

    @classmethod
    def fields(cls, config: Mapping[str, Any], secret_prefix: str) -> Fields:
        """A :class:`Fields` reader for this channel's config."""
        return Fields(cls.name, config, secret_prefix, cls.references)

    @classmethod
    def from_settings(cls, channels: ChannelSettings) -> dict[str, Any] | None:
        """The config given by environment variables, or None when they do not set one."""
        return None

    def resolved(self, environ: Mapping[str, str] | None) -> dict[str, Any]:
        """The config with its ``${NAME}`` references replaced (send time only); ChannelError,
        with the field's usual complaint, when one is not allowed or not set."""
        out = dict(self.config)
        for name, expect in self.references.items():
            value = out.get(name)
            if isinstance(value, str):
                out[name] = self._resolve(name, value, expect, environ)
            elif isinstance(value, dict):
                out[name] = {
                    k: self._resolve(f"{name}.{k}", v, expect, environ) for k, v in value.items()
                }
        return out

    def _resolve(
        self, field_name: str, value: str, expect: str, environ: Mapping[str, str] | None
    ) -> str:
        resolved = resolve(value, self.secret_prefix, environ)
        if resolved is None:
            problem = invalid(expect, self.secret_prefix)
            raise ChannelError(f"field {field_name!r}: {problem}", self.name)
        return resolved

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
        outbound.guard_of(session)  # never through a session without the outbound guard
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
            refusal = outbound.refused(exc)
            if refusal is not None:
                raise self.error(str(refusal), retryable=False) from None
            if isinstance(exc, aiohttp.InvalidURL):  # e.g. http://2130706433/: never canonical
                raise self.error("the URL's host is not valid", retryable=False) from None
            raise self.error(f"connection failed: {type(exc).__name__}", retryable=True) from None


def http_summary(status: int) -> str:
    """``HTTP 404 Not Found``: the status with its standard reason (not the receiver's)."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def check_http(channel: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
    """Raise DeliveryError unless ``status`` is 2xx; decide whether a retry can help. The
    error says the status only: the receiver's answer is not repeated (``/alerts/test``
    would make it a probe of whatever answers there)."""
    if 200 <= status < 300:
        return
    text = http_summary(status)
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


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _control_character(value: Any, path: str = "") -> str | None:
    """The path of the first key or string in ``value`` holding a control character (tabs
    allowed), or None."""
    if isinstance(value, str):
        return path if _CONTROL.search(value) else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _CONTROL.search(key):
                return name
            found = _control_character(item, name)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _control_character(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


class Fields:
    """Reads a channel config field by field; every complaint names the field::

    f = Fields("slack", config)
    url = f.url("webhook_url")
    f.done()          # rejects fields nobody asked for

    ``references`` names the fields read with :meth:`secret` or :meth:`headers` and what
    they hold when not a ``${NAME}`` reference (see :mod:`notifier.secrets`).
    """

    def __init__(
        self,
        channel: str,
        config: Mapping[str, Any],
        secret_prefix: str = DEFAULT_PREFIX,
        references: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(config, Mapping):
            raise ChannelError("config must be a JSON object", channel)
        where = _control_character(config)
        if where is not None:  # PostgreSQL cannot store NUL; no config value spans lines
            raise ChannelError(
                f"field {where!r}: contains a control character (NUL, U+0001-U+001F, "
                "U+007F-U+009F)",
                channel,
            )
        self.channel = channel
        self.config = config
        self.secret_prefix = secret_prefix
        self.references = references or {}
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
        """An http(s) URL, taken literally: a ``${NAME}`` in it would choose where a secret
        goes, so none is allowed, whole or in part."""
        value = self.text(name, required=required, default=default)
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or "${" in value:
                raise self.fail(name, "must be an http(s) URL (without ${...} references)")
        return value

    def secret(
        self,
        name: str,
        *,
        required: bool = False,
        check: Callable[[str], bool] | None = None,
    ) -> str | None:
        """A field that may hold a ``${NAME}`` reference (whole value, allowed prefix); any
        problem with it, of type, form, name or ``check`` on a literal, has one message."""
        value = self._get(name, required)
        if value is None:
            return None
        if not self._secret_ok(value, check):
            raise self.fail(name, invalid(self.references[name], self.secret_prefix))
        self.out[name] = value
        return str(value)

    def headers(self, name: str) -> dict[str, str]:
        """HTTP headers: names are literal tokens, values may be whole ``${NAME}`` references."""
        value = self._get(name, False) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.fail(name, "must be an object of header name to value")
        for header, header_value in value.items():
            if not HEADER_NAME.fullmatch(header):
                raise self.fail(name, f"{header!r} is not a valid header name")
            if not self._secret_ok(header_value, _no_line_break):
                problem = invalid(self.references[name], self.secret_prefix)
                raise self.fail(f"{name}.{header}", problem)
        if value:
            self.out[name] = dict(value)
        return dict(value)

    def _secret_ok(self, value: Any, check: Callable[[str], bool] | None) -> bool:
        if not isinstance(value, str) or value == "":
            return False
        if is_reference(value):
            return allowed(value, self.secret_prefix)
        return check is None or check(value)

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


#: an HTTP header name (RFC 9110 token): no braces, so never a ``${NAME}`` reference
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _no_line_break(value: str) -> bool:
    return not any(c in value for c in "\r\n\x00")
