"""The one configuration object of qes-monitoring, read from the environment once.

Only ``main()`` functions call :meth:`Settings.from_env`; everything else receives a
``Settings`` (or the group it needs) explicitly, so tests build their own with
``Settings(...)`` and ``dataclasses.replace``::

    settings = Settings.from_env(os.environ)
    log.info("configuration: %s", settings.describe())   # secrets masked
    settings.pipeline.window_seconds, settings.api.port, settings.notifier.max_deliveries

A few cross-cutting settings sit at the top (where the servers are, the rules, the Redis key
prefix and shards, the log level); the rest is grouped by who reads it: :class:`ApiSettings`,
:class:`PipelineSettings`, :class:`NotifierSettings`, :class:`ChannelSettings`,
:class:`RetentionSettings` (``qesmon maintain``) and :class:`UpSettings` (``qesmon up``'s
children's credentials). Each field
declares its environment variable, parser, check and mask once, next to it, with
:func:`setting`; reading (:meth:`~Settings.from_env`), checking (:meth:`~Settings.validate`)
and the start-up log (:meth:`~Settings.describe`) are derived from those declarations::

    snapshot_interval: int = setting("SNAPSHOT_INTERVAL_SECONDS", 5, int, check=at_least(1))
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

from qesmon import tiers
from qesmon.addresses import AllowList
from qesmon.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
G = TypeVar("G", bound="DataclassInstance")

_SECRET_WORDS = ("password", "secret", "token", "webhook", "routing_key", "api_key", "auth")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def mask_url(url: str) -> str:
    """Hide the password of a URL (``redis://:pw@host`` -> ``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def mask_secret(value: str | None) -> str | None:
    """Show a secret only as its first characters, or as a ``${ENV}`` reference as given."""
    if value is None or value == "":
        return value
    if _ENV_REF.fullmatch(value):
        return value
    return value[:4] + "***" if len(value) > 12 else "***"


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """Names of the Redis keys; everything lives under one prefix (``qes`` in production)."""

    prefix: str = "qes"
    shards: int = 1

    @property
    def metrics(self) -> list[str]:
        """The metric stream shards: ``qes:metrics`` alone, or ``qes:metrics:0..N-1``."""
        if self.shards == 1:
            return [f"{self.prefix}:metrics"]
        return [f"{self.prefix}:metrics:{i}" for i in range(self.shards)]

    @staticmethod
    def shard_index(tenant: str | None, shards: int) -> int:
        """Which of ``shards`` metric streams holds ``tenant``'s events (no tenant: ``""``).

        A stable hash of the tenant id, so a tenant's events stay in one stream and in order;
        the SDK's collector and the API's ``/record`` must agree on it.
        """
        return zlib.crc32((tenant or "").encode()) % shards

    def shard_for(self, tenant: str | None) -> str:
        """The metric stream for ``tenant``'s events (see :meth:`shard_index`)."""
        return self.metrics[self.shard_index(tenant, self.shards)]

    @property
    def backfill(self) -> str:
        """Historical events (``qesmon demo --backfill``, imports): a shard with its own
        watermark, so week-old events are not late; its windows are not given to the rules."""
        return f"{self.prefix}:metrics:backfill"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:metrics:dead"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    def key(self, *parts: str) -> str:
        """Any other key of ours, e.g. ``keys.key("health", "pipeline")``."""
        return ":".join((self.prefix, *parts))


# -- declaring a setting -------------------------------------------------------------------

#: A check of a value, given the group that holds it (for checks against a sibling): the
#: problem ("must be >= 1"; the variable's name is put in front) or None when the value is fine.
Check: TypeAlias = Callable[[T, Any], str | None]

_VAR = "qesmon.setting"
_GROUP = "qesmon.group"


@dataclass(frozen=True, slots=True)
class Var(Generic[T]):
    """How one setting is read, checked and logged: everything declared next to its field."""

    name: str
    parse: Callable[[str], T]
    check: Check[T] | None = None
    mask: Callable[[T], T] | None = None


def setting(
    var: str,
    default: T,
    parse: Callable[[str], T],
    *,
    check: Check[T] | None = None,
    mask: Callable[[T], T] | None = None,
) -> T:
    """A settings field read from environment variable ``var`` with ``parse`` (an empty
    value means the default), checked by ``check``, shown through ``mask`` in the log."""
    return field(default=default, metadata={_VAR: Var(var, parse, check, mask)})


def group(cls: type[G]) -> G:
    """A settings field that holds a group of settings (a frozen dataclass of ``setting``)."""
    return field(default_factory=cls, metadata={_GROUP: cls})


def at_least(low: float) -> Check[float]:
    return lambda value, _: None if value >= low else f"must be >= {low}"


def above(low: float) -> Check[float]:
    return lambda value, _: None if value > low else f"must be > {low}"


def between(low: int, high: int) -> Check[int]:
    return lambda value, _: None if low <= value <= high else f"must be between {low} and {high}"


def at_least_setting(sibling: str) -> Check[float]:
    """At least the value of another field of the same group, named by its variable."""

    def check(value: float, holder: Any) -> str | None:
        if value >= getattr(holder, sibling):
            return None
        return f"must be >= {_var_of(type(holder), sibling).name}"

    return check


def tcp_port(value: int, _: Any) -> str | None:
    return None if 0 <= value < 65536 else "must be a TCP port"


def _divides_a_minute(value: int, _: Any) -> str | None:
    if value > 0 and 60 % value == 0:
        return None
    return "must divide 60 (1, 2, 5, 10, 15, 20, 30, 60)"


def url_scheme(*schemes: str) -> Check[str]:
    return lambda url, _: (
        None
        if urlsplit(url).scheme in schemes
        else f"must start with one of {schemes}, got {url!r}"
    )


def _key_prefix(value: str, _: Any) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,50}", value):
        return None
    return f"{value!r} must be 1-50 of [A-Za-z0-9_.-]"


def _reference_env_prefix(value: str, _: Any) -> str | None:
    # a short prefix (or none) would let a channel config read any of the process's variables
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{3,63}", value):
        return None
    return f"{value!r} must be 4-64 of [A-Za-z0-9_], not starting with a digit"


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


#: a scrape secret is a machine credential: long enough that guessing it over HTTP is hopeless
MIN_SCRAPE_SECRET = 16


def _bearer_token(raw: str) -> str:
    # RFC 6750 b64token: what fits in an Authorization header as it is (Prometheus trims the
    # credentials file, so the token cannot start or end with a space anyway)
    if not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*", raw):
        raise ValueError("expected letters, digits and -._~+/ (then optional =), e.g. hex")
    if len(raw) < MIN_SCRAPE_SECRET:
        raise ValueError(f"expected at least {MIN_SCRAPE_SECRET} characters")
    return raw


def _basic_auth(raw: str) -> str:
    user, colon, password = raw.partition(":")
    if not colon or not user:
        raise ValueError("expected user:password")
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise ValueError("control characters are not allowed")
    if len(password) < MIN_SCRAPE_SECRET:
        raise ValueError(f"expected a password of at least {MIN_SCRAPE_SECRET} characters")
    return raw


def _mask_basic_auth(value: str | None) -> str | None:
    return None if value is None else value.partition(":")[0] + ":***"


def _exporter_exposure(host: str, api: Any) -> str | None:
    # fail closed: a non-loopback exporter without credentials serves every tenant's revenue
    if (
        is_loopback(host)
        or api.metrics_bearer_token is not None
        or api.metrics_basic_auth is not None
        or api.metrics_allow_anonymous
    ):
        return None
    return (
        f"{host!r} is not a loopback address and the exporter has no credentials: set "
        "PROMETHEUS_METRICS_BEARER_TOKEN or PROMETHEUS_METRICS_BASIC_AUTH (or, when a network "
        "boundary of yours already guards the port, PROMETHEUS_METRICS_ALLOW_UNAUTHENTICATED=true)"
    )


def boolean(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def finite(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdwy]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


#: the longest duration accepted: a retention beyond it is a typo (and overflows date arithmetic)
MAX_DURATION = 1000 * 365 * 86400.0


def duration(raw: str) -> float:
    """Seconds from ``90d``, ``12h``, ``30m``, ``2w``, ``3y`` (365 days) or plain seconds."""
    found = _DURATION.fullmatch(raw.strip())
    seconds = float(found.group(1)) * _DURATION_UNITS[found.group(2)] if found else 0.0
    if not 0 < seconds <= MAX_DURATION:
        raise ValueError("expected a duration such as 2d, 12h, 30m, 2w or 3y, at most 1000y")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration the way :func:`duration` reads it, in its largest whole unit (``1d``)."""
    for unit in ("y", "w", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"


def at_least_duration(low: float) -> Check[float]:
    return lambda value, _: None if value >= low else f"must be at least {format_duration(low)}"


def _level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


# -- the groups ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """The REST API and its Prometheus exporter (``qesmon api``)."""

    host: str = setting("API_HOST", "127.0.0.1", str)
    port: int = setting("API_PORT", 8000, int, check=tcp_port)
    metrics_port: int = setting("PROMETHEUS_METRICS_PORT", 8001, int, check=tcp_port)
    #: the exporter's listen address; anything but loopback needs credentials (or the opt-out)
    metrics_host: str = setting(
        "PROMETHEUS_METRICS_HOST", "127.0.0.1", str, check=_exporter_exposure
    )
    #: a scrape must send ``Authorization: Bearer <token>`` (Prometheus ``authorization``)
    metrics_bearer_token: str | None = setting(
        "PROMETHEUS_METRICS_BEARER_TOKEN", None, _bearer_token, mask=mask_secret
    )
    #: ``user:password`` a scrape may send as basic auth (Prometheus ``basic_auth``)
    metrics_basic_auth: str | None = setting(
        "PROMETHEUS_METRICS_BASIC_AUTH", None, _basic_auth, mask=_mask_basic_auth
    )
    #: serve a non-loopback exporter without credentials (a firewall of yours guards it)
    metrics_allow_anonymous: bool = setting(
        "PROMETHEUS_METRICS_ALLOW_UNAUTHENTICATED", False, boolean
    )
    #: per-tenant business series; false: folded over tenants, without the ``tenant_id`` label
    tenant_series: bool = setting("PROMETHEUS_TENANT_SERIES", True, boolean)
    #: slower requests count as slow (seconds)
    slow_request_threshold: float = setting("SLOW_REQUEST_THRESHOLD", 1.0, finite, check=above(0))
    resource_monitoring_interval: float = setting(
        "RESOURCE_MONITORING_INTERVAL", 30.0, finite, check=above(0)
    )
    resource_monitor: bool = setting("RESOURCE_MONITOR", True, boolean)
    #: a report's SQL statement running longer is cancelled (the request answers 504)
    report_statement_timeout: float = setting(
        "API_REPORT_STATEMENT_TIMEOUT_SECONDS", 30.0, finite, check=above(0)
    )
    #: live streams (SSE) one API key may hold open at once per API process (429 beyond)
    live_streams_per_key: int = setting("API_LIVE_STREAMS_PER_KEY", 10, int, check=at_least(1))


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """The Bytewax pipeline: windows, snapshots, and the bounds against hostile producers
    (issue 13; see README "Limits"). The API reads the window width and lateness too."""

    window_seconds: int = setting("WINDOW_SECONDS", 10, int, check=_divides_a_minute)
    watermark_wait: float = setting("WATERMARK_WAIT_SECONDS", 2.0, finite, check=at_least(0))
    allowed_lateness: float = setting("ALLOWED_LATENESS_SECONDS", 30.0, finite, check=at_least(0))
    recovery_dir: Path = setting("RECOVERY_DIR", Path("var/recovery"), Path)
    snapshot_interval: int = setting("SNAPSHOT_INTERVAL_SECONDS", 5, int, check=at_least(1))
    #: consumed stream entries are trimmed once a snapshot this old covers them
    #: (None: 3 snapshot intervals + 30 s)
    stream_trim_after: float | None = setting("STREAM_TRIM_AFTER_SECONDS", None, finite)
    #: a stream entry larger than this (UTF-8 bytes) is a dead letter, not parsed
    max_entry_bytes: int = setting("MAX_ENTRY_BYTES", 4 * 2**20, int, check=at_least(65536))
    #: one dead letter holds at most this many bytes (original fields cut to an excerpt)
    dead_letter_max_bytes: int = setting("DEAD_LETTER_MAX_BYTES", 8192, int, check=at_least(2048))
    #: the dead-letter stream keeps about this many entries (oldest dropped)
    dead_letter_maxlen: int = setting("DEAD_LETTER_MAXLEN", 50_000, int, check=at_least(100))
    #: active series (with a window still open, up to an hour) per tenant and shard
    max_series_per_tenant: int = setting("MAX_SERIES_PER_TENANT", 10_000, int, check=at_least(1))
    #: active series per shard, all tenants together
    max_series: int = setting(
        "MAX_SERIES", 100_000, int, check=at_least_setting("max_series_per_tenant")
    )
    #: alert groups (one alert each) a rule may keep at once
    max_alert_groups_per_rule: int = setting(
        "MAX_ALERT_GROUPS_PER_RULE", 1_000, int, check=at_least(1)
    )


@dataclass(frozen=True, kw_only=True)
class NotifierSettings:
    """Delivery tuning of the notifier (``qesmon notifier``)."""

    #: multiplies escalation and repeat delays (e.g. 0.01 for a demo)
    time_scale: float = setting("NOTIFIER_TIME_SCALE", 1.0, finite, check=above(0))
    retry_base: float = setting("NOTIFIER_RETRY_BASE_SECONDS", 1.0, finite, check=above(0))
    retry_max: float = setting(
        "NOTIFIER_RETRY_MAX_SECONDS", 300.0, finite, check=at_least_setting("retry_base")
    )
    delivery_deadline: float = setting(
        "NOTIFIER_DELIVERY_DEADLINE_SECONDS", 86400.0, finite, check=above(0)
    )
    #: a dead notifier's unacknowledged alert entries are taken over after this long
    claim_idle: float = setting("NOTIFIER_CLAIM_IDLE_SECONDS", 30.0, finite, check=above(0))
    #: an alert entry that failed this many times is parked as a dead letter
    max_deliveries: int = setting("NOTIFIER_MAX_DELIVERIES", 5, int, check=at_least(1))
    #: the alerts' dead-letter stream keeps about this many entries (oldest dropped)
    dead_letter_maxlen: int = setting("ALERTS_DEAD_LETTER_MAXLEN", 10_000, int, check=at_least(100))


@dataclass(frozen=True, kw_only=True)
class ChannelSettings:
    """Notification channels configured by the environment (the API can override them)."""

    slack_webhook_url: str | None = setting("SLACK_WEBHOOK_URL", None, str, mask=mask_secret)
    email_smtp_host: str | None = setting("EMAIL_SMTP_HOST", None, str)
    email_smtp_port: int = setting("EMAIL_SMTP_PORT", 587, int)
    email_smtp_user: str | None = setting("EMAIL_SMTP_USER", None, str)
    email_smtp_password: str | None = setting("EMAIL_SMTP_PASSWORD", None, str, mask=mask_secret)
    email_from: str | None = setting("EMAIL_FROM", None, str)
    email_to: str | None = setting("EMAIL_TO", None, str)
    discord_webhook_url: str | None = setting("DISCORD_WEBHOOK_URL", None, str, mask=mask_secret)
    webhook_url: str | None = setting("WEBHOOK_URL", None, str, mask=mask_secret)
    twilio_account_sid: str | None = setting("TWILIO_ACCOUNT_SID", None, str)
    twilio_auth_token: str | None = setting("TWILIO_AUTH_TOKEN", None, str, mask=mask_secret)
    twilio_from: str | None = setting("TWILIO_FROM", None, str)
    twilio_api_url: str = setting("TWILIO_API_URL", "https://api.twilio.com", str)
    sms_to: str | None = setting("SMS_TO", None, str)
    pagerduty_routing_key: str | None = setting(
        "PAGERDUTY_ROUTING_KEY", None, str, mask=mask_secret
    )
    pagerduty_events_url: str = setting(
        "PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com/v2/enqueue", str
    )
    alertmanager_url: str | None = setting("ALERTMANAGER_URL", None, str)
    #: receivers one tenant may configure (``/alerts/configure`` with a tenant's key)
    receivers_per_tenant: int = setting("RECEIVERS_PER_TENANT", 20, int, check=at_least(1))
    #: non-public addresses the channels may reach (qesmon.addresses): loopback, private, ...
    outbound_allow: AllowList | None = setting("OUTBOUND_ALLOW", None, AllowList.parse)
    #: a channel config's ``${NAME}`` may only name variables starting with this
    reference_env_prefix: str = setting(
        "SECRET_ENV_PREFIX", "QESMON_SECRET_", str, check=_reference_env_prefix
    )


@dataclass(frozen=True, kw_only=True)
class RetentionSettings:
    """How long data is kept: what ``qesmon maintain`` drops and deletes (README "Data
    lifecycle"). Rollup tiers leave by whole chunks once older than their retention; the other
    tables by batched deletes. Durations: ``2d``, ``12h``, ``3y``, or seconds."""

    rollups_10s: float = setting("RETENTION_10S", 12 * 3600.0, duration)
    rollups_1m: float = setting(
        "RETENTION_1M", 4 * 86400.0, duration, check=at_least_setting("rollups_10s")
    )
    rollups_1h: float = setting(
        "RETENTION_1H", 90 * 86400.0, duration, check=at_least_setting("rollups_1m")
    )
    rollups_1d: float = setting(
        "RETENTION_1D", 3 * 365 * 86400.0, duration, check=at_least_setting("rollups_1h")
    )
    #: resolved alerts with their history (events, notices, timers); open alerts are kept
    alerts: float = setting(
        "RETENTION_ALERTS", 90 * 86400.0, duration, check=at_least_duration(86400)
    )
    #: delivery attempts (``deliveries``), except those of a notice still being delivered
    deliveries: float = setting(
        "RETENTION_DELIVERIES", 30 * 86400.0, duration, check=at_least_duration(86400)
    )
    #: notices that are done (sent, failed, given up); pending ones are kept
    outbox: float = setting(
        "RETENTION_OUTBOX", 30 * 86400.0, duration, check=at_least_duration(86400)
    )
    #: transitions the notifier has seen (replay guard), fired/cancelled timers of resolved alerts
    notifier_state: float = setting(
        "RETENTION_NOTIFIER_STATE", 7 * 86400.0, duration, check=at_least_duration(86400)
    )
    audit_log: float = setting(
        "RETENTION_AUDIT_LOG", 365 * 86400.0, duration, check=at_least_duration(86400)
    )

    def of(self, tier: tiers.Tier) -> float:
        """The retention of a rollup tier, in seconds."""
        return float(getattr(self, f"rollups_{tier.name}"))

    def problem(self, lateness: float) -> str | None:
        """Why these retentions would drop a window late events may still update, or None."""
        for tier in tiers.TIERS:
            low = tiers.min_horizon(tier, lateness)
            if self.of(tier) < low:
                var = _var_of(RetentionSettings, f"rollups_{tier.name}").name
                return (
                    f"{var} must be at least {format_duration(low)}: its widest window "
                    f"({format_duration(low - lateness - tiers.MARGIN)}) + "
                    f"ALLOWED_LATENESS_SECONDS ({lateness:g} s) + a margin of "
                    f"{format_duration(tiers.MARGIN)} for a pipeline that is behind"
                )
        return None


def _redis_url_or_none(url: str | None, holder: Any) -> str | None:
    return None if url is None else url_scheme("redis", "rediss", "unix")(url, holder)


def _database_url_or_none(url: str | None, holder: Any) -> str | None:
    return None if url is None else url_scheme("postgresql", "postgres")(url, holder)


def _mask_url_or_none(url: str | None) -> str | None:
    return None if url is None else mask_url(url)


@dataclass(frozen=True, kw_only=True)
class UpSettings:
    """The Redis users and database roles ``qesmon up`` gives its children, each its own
    (``scripts/setup.sh`` writes them into ``var/env.sh``; what each may do:
    ``scripts/redis-users.sh`` and ``migrations/grants.sql``). A child runs with its URLs as
    ``REDIS_URL`` and ``DATABASE_URL``, or with ``up``'s own when its URL is not set."""

    pipeline_redis_url: str | None = setting(
        "QESMON_PIPELINE_REDIS_URL", None, str, check=_redis_url_or_none, mask=_mask_url_or_none
    )
    notifier_redis_url: str | None = setting(
        "QESMON_NOTIFIER_REDIS_URL", None, str, check=_redis_url_or_none, mask=_mask_url_or_none
    )
    api_redis_url: str | None = setting(
        "QESMON_API_REDIS_URL", None, str, check=_redis_url_or_none, mask=_mask_url_or_none
    )
    pipeline_database_url: str | None = setting(
        "QESMON_PIPELINE_DATABASE_URL",
        None,
        str,
        check=_database_url_or_none,
        mask=_mask_url_or_none,
    )
    notifier_database_url: str | None = setting(
        "QESMON_NOTIFIER_DATABASE_URL",
        None,
        str,
        check=_database_url_or_none,
        mask=_mask_url_or_none,
    )
    api_database_url: str | None = setting(
        "QESMON_API_DATABASE_URL", None, str, check=_database_url_or_none, mask=_mask_url_or_none
    )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Effective configuration: the cross-cutting settings and one group per reader."""

    redis_url: str = setting(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        str,
        check=url_scheme("redis", "rediss", "unix"),
        mask=mask_url,
    )
    database_url: str = setting(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/qesmon",
        str,
        check=url_scheme("postgresql", "postgres"),
        mask=mask_url,
    )
    rules_dir: Path = setting("RULES_DIR", Path("rules"), Path)
    key_prefix: str = setting("QESMON_KEY_PREFIX", "qes", str, check=_key_prefix)
    stream_shards: int = setting("STREAM_SHARDS", 1, int, check=between(1, 1024))
    log_level: str = setting("LOG_LEVEL", "INFO", _level)
    api: ApiSettings = group(ApiSettings)
    pipeline: PipelineSettings = group(PipelineSettings)
    notifier: NotifierSettings = group(NotifierSettings)
    channels: ChannelSettings = group(ChannelSettings)
    retention: RetentionSettings = group(RetentionSettings)
    up: UpSettings = group(UpSettings)
    #: every ``QESMON_*`` variable, for extensions (secrets masked in the log by their name)
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def streams(self) -> StreamKeys:
        return StreamKeys(self.key_prefix, self.stream_shards)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build and validate settings from environment variables; raise ConfigError."""
        settings = _read(cls, env)
        settings = dataclasses.replace(
            settings, extra={k: v for k, v in env.items() if k.startswith("QESMON_")}
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check ranges and formats; raise ConfigError naming the variable."""
        for var, value, holder in _walk(self):
            if var.check is not None:
                problem = var.check(value, holder)
                if problem is not None:
                    raise ConfigError(f"{var.name} {problem}")
        across = self.retention.problem(self.pipeline.allowed_lateness)
        if across is not None:
            raise ConfigError(across)

    def describe(self) -> dict[str, Any]:
        """The effective configuration with every secret masked, for the start-up log."""
        out = _describe(self)
        out["extra"] = {k: _mask_extra(k, v) for k, v in self.extra.items()}
        return out


def _mask_extra(name: str, value: str) -> str | None:
    """An extension's variable for the log: masked when its name looks like a secret, and
    a URL's password always (``QESMON_PRIVATE_REDIS_URL`` is the admin's URL)."""
    if any(w in name.lower() for w in _SECRET_WORDS):
        return mask_secret(value)
    try:
        return mask_url(value)
    except ValueError:  # not a URL at all, e.g. "[": shown as it is only without a "@"
        return "***" if "@" in value else value


# -- derived from the declarations ---------------------------------------------------------


def _var_of(cls: type[Any], name: str) -> Var[Any]:
    var: Var[Any] = next(f for f in dataclasses.fields(cls) if f.name == name).metadata[_VAR]
    return var


def _read(cls: type[G], env: Mapping[str, str]) -> G:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if _GROUP in f.metadata:
            values[f.name] = _read(f.metadata[_GROUP], env)
        elif _VAR in f.metadata:
            var: Var[Any] = f.metadata[_VAR]
            raw = env.get(var.name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = var.parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{var.name}={raw!r} is invalid: {exc}") from None
    return cls(**values)


def _walk(holder: Any) -> Iterator[tuple[Var[Any], Any, Any]]:
    """Every setting under ``holder`` in declaration order: (declaration, value, holder)."""
    for f in dataclasses.fields(holder):
        if _GROUP in f.metadata:
            yield from _walk(getattr(holder, f.name))
        elif _VAR in f.metadata:
            yield f.metadata[_VAR], getattr(holder, f.name), holder


def _describe(holder: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(holder):
        value = getattr(holder, f.name)
        if _GROUP in f.metadata:
            out[f.name] = _describe(value)
        elif _VAR in f.metadata:
            var: Var[Any] = f.metadata[_VAR]
            if var.mask is not None and value is not None:
                value = var.mask(value)
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def _variables(cls: type[Any], path: str = "") -> Iterator[tuple[str, Var[Any], Any]]:
    for f in dataclasses.fields(cls):
        if _GROUP in f.metadata:
            yield from _variables(f.metadata[_GROUP], f"{path}{f.name}.")
        elif _VAR in f.metadata:
            yield f"{path}{f.name}", f.metadata[_VAR], f.default


#: dotted field path (``pipeline.window_seconds``) -> (environment variable, parser)
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    path: (var.name, var.parse) for path, var, _ in _variables(Settings)
}

#: dotted field path -> default value, for the README's table and its test
DEFAULTS: dict[str, Any] = {path: default for path, _, default in _variables(Settings)}

__all__ = [
    "DEFAULTS",
    "ENV",
    "ApiSettings",
    "ChannelSettings",
    "NotifierSettings",
    "PipelineSettings",
    "RetentionSettings",
    "Settings",
    "StreamKeys",
    "UpSettings",
    "Var",
    "is_loopback",
    "mask_secret",
    "mask_url",
    "setting",
]
