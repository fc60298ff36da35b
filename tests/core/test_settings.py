"""Settings: read once from the environment, validated, secrets masked."""

from __future__ import annotations

import dataclasses
import re
import zlib
from pathlib import Path

import pytest

from qesmon.errors import ConfigError
from qesmon.settings import DEFAULTS, ENV, Settings, StreamKeys, mask_secret, mask_url

README = Path(__file__).parents[2] / "README.md"


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert (s.api.port, s.api.metrics_port, s.pipeline.window_seconds) == (8000, 8001, 10)
    assert (s.notifier.max_deliveries, s.notifier.dead_letter_maxlen) == (5, 10_000)
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
        ({"MAX_SERIES": "5"}, "MAX_SERIES must be >= MAX_SERIES_PER_TENANT"),
        (
            {"NOTIFIER_RETRY_MAX_SECONDS": "0.5"},
            "NOTIFIER_RETRY_MAX_SECONDS must be >= NOTIFIER_RETRY_BASE_SECONDS",
        ),
        ({"NOTIFIER_MAX_DELIVERIES": "0"}, "NOTIFIER_MAX_DELIVERIES must be >= 1"),
        ({"ALERTS_DEAD_LETTER_MAXLEN": "10"}, "ALERTS_DEAD_LETTER_MAXLEN must be >= 100"),
        ({"RESOURCE_MONITOR": "maybe"}, "RESOURCE_MONITOR='maybe' is invalid"),
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


def test_each_group_reads_its_own_variables() -> None:
    s = Settings.from_env(
        {
            "API_PORT": "9000",
            "WINDOW_SECONDS": "5",
            "NOTIFIER_MAX_DELIVERIES": "3",
            "ALERTS_DEAD_LETTER_MAXLEN": "500",
            "WEBHOOK_URL": "https://hooks.example.com/x",
            "RECOVERY_DIR": "/tmp/r",
            "STREAM_TRIM_AFTER_SECONDS": "60",
        }
    )
    assert s.api.port == 9000 and s.pipeline.window_seconds == 5
    assert (s.notifier.max_deliveries, s.notifier.dead_letter_maxlen) == (3, 500)
    assert s.channels.webhook_url == "https://hooks.example.com/x"
    assert (s.pipeline.recovery_dir, s.pipeline.stream_trim_after) == (Path("/tmp/r"), 60.0)
    assert Settings.from_env({"API_PORT": ""}).api.port == 8000  # empty means the default


def test_every_field_declares_one_variable_of_its_own() -> None:
    names = [var for var, _ in ENV.values()]
    assert len(names) == len(set(names))
    for group in ("api", "pipeline", "notifier", "channels"):
        holder = getattr(Settings(), group)
        for f in dataclasses.fields(holder):
            assert f"{group}.{f.name}" in ENV, f"{group}.{f.name} has no variable"


def test_a_field_named_like_a_secret_declares_a_mask() -> None:
    words = ("password", "secret", "token", "webhook", "routing_key", "api_key", "auth")
    secret = [path for path in ENV if any(w in path for w in words)]
    assert secret, "the channels have secrets"
    # a secret with a format of its own: the user stays visible, the password not
    formatted = {"PROMETHEUS_METRICS_BASIC_AUTH": "scraper:a-secret-value-long-enough"}
    env = {ENV[path][0]: "a-secret-value-long-enough" for path in secret} | formatted
    described = repr(Settings.from_env(env).describe())
    assert "a-secret-value-long-enough" not in described
    assert described.count("a-se***") == len(secret) - len(formatted)
    assert "'scraper:***'" in described


def test_the_readme_lists_every_variable_with_its_default() -> None:
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", section, re.MULTILINE)
    }
    for path, (var, _) in ENV.items():
        assert var in rows, f"{var} ({path}) is not in the README's Configuration table"
        default = DEFAULTS[path]
        shown = rows[var].replace(",", "").replace("`", "").split()[0]
        if default is None:
            assert shown == "—", f"{var}: README says {rows[var]!r}, no default"
        elif isinstance(default, bool):
            assert shown == str(default).lower(), f"{var}: README says {rows[var]!r}"
        elif isinstance(default, int | float):
            assert float(shown) == default, f"{var}: README says {rows[var]!r}"
        else:
            assert shown == str(default), f"{var}: README says {rows[var]!r}"


def test_one_shard_formula_for_the_sdk_and_the_api() -> None:
    keys = StreamKeys("qes", 4)
    assert keys.shard_for("t-7") == keys.metrics[zlib.crc32(b"t-7") % 4]
    assert keys.shard_for(None) == keys.shard_for("") == keys.metrics[zlib.crc32(b"") % 4]
    assert StreamKeys("qes", 1).shard_for("t-7") == "qes:metrics"
