"""The one configuration object of qes-monitoring, read from the environment once.

Only ``main()`` functions call :meth:`Settings.from_env`; everything else receives a
``Settings`` explicitly, so tests build their own with :meth:`Settings.for_tests` or
``dataclasses.replace``::

    settings = Settings.from_env(os.environ)
    log.info("configuration: %s", settings.describe())   # secrets masked
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from qesmon.errors import ConfigError

T = TypeVar("T")

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


@dataclass(frozen=True)
class Settings:
    """Effective configuration; every field maps to one environment variable (see ``ENV``)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/qesmon"
    rules_dir: Path = Path("rules")
    key_prefix: str = "qes"
    stream_shards: int = 1
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    prometheus_metrics_port: int = 8001
    window_seconds: int = 10
    watermark_wait: float = 2.0
    allowed_lateness: float = 30.0
    recovery_dir: Path = Path("var/recovery")
    snapshot_interval: int = 5
    #: consumed stream entries are trimmed once a snapshot this old covers them
    #: (None: 3 snapshot intervals + 30 s)
    stream_trim_after: float | None = None
    # bounds against hostile or broken producers (issue 13); see README "Limits"
    #: a stream entry larger than this (UTF-8 bytes) is a dead letter, not parsed
    max_entry_bytes: int = 4 * 2**20
    #: one dead letter holds at most this many bytes (original fields cut to an excerpt)
    dead_letter_max_bytes: int = 8192
    #: the dead-letter stream keeps about this many entries (oldest dropped)
    dead_letter_maxlen: int = 50_000
    #: active series (with a window still open, up to an hour) per tenant and shard
    max_series_per_tenant: int = 10_000
    #: active series per shard, all tenants together
    max_series: int = 100_000
    #: alert groups (one alert each) a rule may keep at once
    max_alert_groups_per_rule: int = 1_000
    slow_request_threshold: float = 1.0
    resource_monitoring_interval: float = 30.0
    resource_monitor: bool = True
    slack_webhook_url: str | None = None
    email_smtp_host: str | None = None
    email_smtp_port: int = 587
    email_smtp_user: str | None = None
    email_smtp_password: str | None = None
    email_from: str | None = None
    email_to: str | None = None
    # notifier (issue 5): channel endpoints and delivery tuning
    discord_webhook_url: str | None = None
    webhook_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from: str | None = None
    twilio_api_url: str = "https://api.twilio.com"
    sms_to: str | None = None
    pagerduty_routing_key: str | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    alertmanager_url: str | None = None
    notifier_time_scale: float = 1.0
    notifier_retry_base: float = 1.0
    notifier_retry_max: float = 300.0
    notifier_delivery_deadline: float = 86400.0
    notifier_claim_idle: float = 30.0
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def streams(self) -> StreamKeys:
        return StreamKeys(self.key_prefix, self.stream_shards)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build and validate settings from environment variables; raise ConfigError."""
        values: dict[str, Any] = {}
        for name, (var, parse) in ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{var}={raw!r} is invalid: {exc}") from None
        values["extra"] = {k: v for k, v in env.items() if k.startswith("QESMON_")}
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check ranges and formats; raise ConfigError naming the variable."""
        for scheme_var, url, schemes in (
            ("REDIS_URL", self.redis_url, ("redis", "rediss", "unix")),
            ("DATABASE_URL", self.database_url, ("postgresql", "postgres")),
        ):
            if urlsplit(url).scheme not in schemes:
                raise ConfigError(f"{scheme_var} must start with one of {schemes}, got {url!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,50}", self.key_prefix):
            raise ConfigError(
                f"QESMON_KEY_PREFIX {self.key_prefix!r} must be 1-50 of [A-Za-z0-9_.-]"
            )
        checks: list[tuple[str, bool]] = [
            ("STREAM_SHARDS must be between 1 and 1024", 1 <= self.stream_shards <= 1024),
            ("API_PORT must be a TCP port", 0 <= self.api_port < 65536),
            (
                "PROMETHEUS_METRICS_PORT must be a TCP port",
                0 <= self.prometheus_metrics_port < 65536,
            ),
            (
                "WINDOW_SECONDS must divide 60 (1, 2, 5, 10, 15, 20, 30, 60)",
                self.window_seconds > 0 and 60 % self.window_seconds == 0,
            ),
            ("WATERMARK_WAIT_SECONDS must be >= 0", self.watermark_wait >= 0),
            ("ALLOWED_LATENESS_SECONDS must be >= 0", self.allowed_lateness >= 0),
            ("SNAPSHOT_INTERVAL_SECONDS must be >= 1", self.snapshot_interval >= 1),
            ("MAX_ENTRY_BYTES must be >= 65536", self.max_entry_bytes >= 65536),
            ("DEAD_LETTER_MAX_BYTES must be >= 2048", self.dead_letter_max_bytes >= 2048),
            ("DEAD_LETTER_MAXLEN must be >= 100", self.dead_letter_maxlen >= 100),
            ("MAX_SERIES_PER_TENANT must be >= 1", self.max_series_per_tenant >= 1),
            (
                "MAX_SERIES must be >= MAX_SERIES_PER_TENANT",
                self.max_series >= self.max_series_per_tenant,
            ),
            ("MAX_ALERT_GROUPS_PER_RULE must be >= 1", self.max_alert_groups_per_rule >= 1),
            ("SLOW_REQUEST_THRESHOLD must be > 0", self.slow_request_threshold > 0),
            ("RESOURCE_MONITORING_INTERVAL must be > 0", self.resource_monitoring_interval > 0),
            ("NOTIFIER_TIME_SCALE must be > 0", self.notifier_time_scale > 0),
            ("NOTIFIER_RETRY_BASE_SECONDS must be > 0", self.notifier_retry_base > 0),
            (
                "NOTIFIER_RETRY_MAX_SECONDS must be >= NOTIFIER_RETRY_BASE_SECONDS",
                self.notifier_retry_max >= self.notifier_retry_base,
            ),
            ("NOTIFIER_DELIVERY_DEADLINE_SECONDS must be > 0", self.notifier_delivery_deadline > 0),
            ("NOTIFIER_CLAIM_IDLE_SECONDS must be > 0", self.notifier_claim_idle > 0),
        ]
        for message, ok in checks:
            if not ok:
                raise ConfigError(message)

    def describe(self) -> dict[str, Any]:
        """The effective configuration with every secret masked, for the start-up log."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("redis_url", "database_url"):
                value = mask_url(value)
            elif isinstance(value, str) and any(w in f.name for w in _SECRET_WORDS):
                value = mask_secret(value)
            elif f.name == "extra":
                value = {
                    k: mask_secret(v) if any(w in k.lower() for w in _SECRET_WORDS) else v
                    for k, v in value.items()
                }
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _pos_float(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def _level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


_str: Callable[[str], str] = str

#: field name -> (environment variable, parser)
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "redis_url": ("REDIS_URL", _str),
    "database_url": ("DATABASE_URL", _str),
    "rules_dir": ("RULES_DIR", Path),
    "key_prefix": ("QESMON_KEY_PREFIX", _str),
    "stream_shards": ("STREAM_SHARDS", int),
    "api_host": ("API_HOST", _str),
    "api_port": ("API_PORT", int),
    "prometheus_metrics_port": ("PROMETHEUS_METRICS_PORT", int),
    "window_seconds": ("WINDOW_SECONDS", int),
    "watermark_wait": ("WATERMARK_WAIT_SECONDS", _pos_float),
    "allowed_lateness": ("ALLOWED_LATENESS_SECONDS", _pos_float),
    "recovery_dir": ("RECOVERY_DIR", Path),
    "snapshot_interval": ("SNAPSHOT_INTERVAL_SECONDS", int),
    "stream_trim_after": ("STREAM_TRIM_AFTER_SECONDS", _pos_float),
    "max_entry_bytes": ("MAX_ENTRY_BYTES", int),
    "dead_letter_max_bytes": ("DEAD_LETTER_MAX_BYTES", int),
    "dead_letter_maxlen": ("DEAD_LETTER_MAXLEN", int),
    "max_series_per_tenant": ("MAX_SERIES_PER_TENANT", int),
    "max_series": ("MAX_SERIES", int),
    "max_alert_groups_per_rule": ("MAX_ALERT_GROUPS_PER_RULE", int),
    "slow_request_threshold": ("SLOW_REQUEST_THRESHOLD", _pos_float),
    "resource_monitoring_interval": ("RESOURCE_MONITORING_INTERVAL", _pos_float),
    "resource_monitor": ("RESOURCE_MONITOR", _bool),
    "slack_webhook_url": ("SLACK_WEBHOOK_URL", _str),
    "email_smtp_host": ("EMAIL_SMTP_HOST", _str),
    "email_smtp_port": ("EMAIL_SMTP_PORT", int),
    "email_smtp_user": ("EMAIL_SMTP_USER", _str),
    "email_smtp_password": ("EMAIL_SMTP_PASSWORD", _str),
    "email_from": ("EMAIL_FROM", _str),
    "email_to": ("EMAIL_TO", _str),
    "discord_webhook_url": ("DISCORD_WEBHOOK_URL", _str),
    "webhook_url": ("WEBHOOK_URL", _str),
    "twilio_account_sid": ("TWILIO_ACCOUNT_SID", _str),
    "twilio_auth_token": ("TWILIO_AUTH_TOKEN", _str),
    "twilio_from": ("TWILIO_FROM", _str),
    "twilio_api_url": ("TWILIO_API_URL", _str),
    "sms_to": ("SMS_TO", _str),
    "pagerduty_routing_key": ("PAGERDUTY_ROUTING_KEY", _str),
    "pagerduty_events_url": ("PAGERDUTY_EVENTS_URL", _str),
    "alertmanager_url": ("ALERTMANAGER_URL", _str),
    "notifier_time_scale": ("NOTIFIER_TIME_SCALE", _pos_float),
    "notifier_retry_base": ("NOTIFIER_RETRY_BASE_SECONDS", _pos_float),
    "notifier_retry_max": ("NOTIFIER_RETRY_MAX_SECONDS", _pos_float),
    "notifier_delivery_deadline": ("NOTIFIER_DELIVERY_DEADLINE_SECONDS", _pos_float),
    "notifier_claim_idle": ("NOTIFIER_CLAIM_IDLE_SECONDS", _pos_float),
    "log_level": ("LOG_LEVEL", _level),
}

__all__ = ["ENV", "Settings", "StreamKeys", "mask_secret", "mask_url"]
