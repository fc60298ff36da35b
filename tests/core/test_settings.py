"""Settings: read once from the environment, validated, secrets masked."""

from __future__ import annotations

import zlib

import pytest

from qesmon.errors import ConfigError
from qesmon.settings import Settings, StreamKeys, mask_secret, mask_url


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert (s.api_port, s.prometheus_metrics_port, s.window_seconds) == (8000, 8001, 10)
    assert s.streams.metrics == ["qes:metrics"]
    assert (s.streams.dead, s.streams.alerts) == ("qes:metrics:dead", "qes:alerts")


def test_shards_are_numbered() -> None:
    assert StreamKeys("qes", 3).metrics == ["qes:metrics:0", "qes:metrics:1", "qes:metrics:2"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_PORT": "http"}, "API_PORT='http' is invalid"),
        ({"API_PORT": "70000"}, "API_PORT must be a TCP port"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with one of"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL must start with one of"),
        ({"WINDOW_SECONDS": "7"}, "WINDOW_SECONDS must divide 60"),
        ({"WATERMARK_WAIT_SECONDS": "nan"}, "WATERMARK_WAIT_SECONDS='nan' is invalid"),
        ({"STREAM_SHARDS": "0"}, "STREAM_SHARDS must be between 1 and 1024"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is invalid"),
        ({"QESMON_KEY_PREFIX": "a b"}, "QESMON_KEY_PREFIX 'a b'"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_describe_masks_every_secret() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:hunter2@db:5432/qesmon",
            "REDIS_URL": "redis://:s3cret@redis:6379/0",
            "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
            "EMAIL_SMTP_PASSWORD": "p4ssw0rd-long-enough",
        }
    )
    text = repr(s.describe())
    for secret in ("hunter2", "s3cret", "XXXXXXXXXXXXXXXX", "p4ssw0rd-long-enough"):
        assert secret not in text
    assert "postgresql://app:***@db:5432/qesmon" in text
    assert s.describe()["key_prefix"] == "qes"


def test_env_references_stay_visible_when_masked() -> None:
    assert mask_secret("${SLACK_TOKEN}") == "${SLACK_TOKEN}"
    assert mask_secret("short") == "***"
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_one_shard_formula_for_the_sdk_and_the_api() -> None:
    keys = StreamKeys("qes", 4)
    assert keys.shard_for("t-7") == keys.metrics[zlib.crc32(b"t-7") % 4]
    assert keys.shard_for(None) == keys.shard_for("") == keys.metrics[zlib.crc32(b"") % 4]
    assert StreamKeys("qes", 1).shard_for("t-7") == "qes:metrics"
