"""The servers' credentials (issue 15, item 6): Redis users from ``scripts/redis-users.sh`` and the
private PostgreSQL's password, against the real servers.

The users are built from the very output of ``scripts/redis-users.sh`` (the script the set-up and
docker-compose run), for each test's own key prefix and under names of its own, on the Redis
the suite runs against, so several sessions can share it. The set-up itself is run on a
directory and ports of its own (``QESMON_VAR_DIR``, ``QESMON_REDIS_PORT``, ``QESMON_PG_PORT``):
fresh, again, and over a cluster and a Redis as the set-up made them before passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import pytest
import redis

from api.keys import create_key_sync
from notifier.service import GROUP
from qesmon.sdk.collector import WRITE_ROUND, MetricsCollector
from qesmon.settings import Settings, StreamKeys
from tests.ops.test_compose import REQUIRED, interpolate
from tests.ops.test_compose import _services as _compose_services
from tests.support.faults import free_port
from tests.support.processes import settings_env, wait_for
from tests.support.settings import replace_settings

ROOT = Path(__file__).resolve().parents[2]
USERS_SCRIPT = ROOT / "scripts" / "redis-users.sh"
SETUP = ROOT / "scripts" / "setup.sh"
ROLES = ("producer", "pipeline", "notifier", "api")


# -- the users, as scripts/redis-users.sh writes them ------------------------------------------


def render(prefix: str, passwords: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "QESMON_KEY_PREFIX": prefix}
    env.update({f"REDIS_{name.upper()}_PASSWORD": pw for name, pw in passwords.items()})
    return subprocess.run(
        ["sh", str(USERS_SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


def user_rules(prefix: str, passwords: Mapping[str, str]) -> dict[str, list[str]]:
    """User name -> its ACL rules (a selector ``(...)`` is one rule), from the script."""
    done = render(prefix, passwords)
    assert done.returncode == 0, done.stderr
    users = {}
    for line in done.stdout.splitlines():
        word, name, rest = line.split(" ", 2)
        assert word == "user", line
        users[name] = re.findall(r"\([^)]*\)|\S+", rest)
    return users


def passwords() -> dict[str, str]:
    return {name: secrets.token_hex(16) for name in ("admin", *ROLES)}


@pytest.fixture
def users(settings: Settings, redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """Role -> URL of a user with that role's rules, for this test's prefix, on the real Redis
    (deleted afterwards)."""
    secret = passwords()
    rules = user_rules(settings.key_prefix, secret)
    base = urlsplit(settings.redis_url)
    urls = {}
    for role in ROLES:
        name = f"{settings.key_prefix}-{role}"
        redis_client.execute_command("ACL", "SETUSER", name, "reset", *rules[role])
        netloc = f"{name}:{secret[role]}@{base.hostname}:{base.port}"
        urls[role] = urlunsplit(base._replace(netloc=netloc))
    yield urls
    redis_client.execute_command("ACL", "DELUSER", *(f"{settings.key_prefix}-{r}" for r in ROLES))


def refusals(client: redis.Redis, names: set[str]) -> list[dict[str, Any]]:
    """The ACL log's entries (refused commands and keys) of these users."""
    entries = client.execute_command("ACL", "LOG", 1000)
    out = []
    for entry in entries:
        fields = (
            entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        )
        if fields["username"] in names:
            out.append(fields)
    return out


def test_the_script_allows_exactly_the_sdk_flush_script() -> None:
    rules = user_rules("qes", passwords())
    sha = hashlib.sha1(WRITE_ROUND.encode()).hexdigest()
    for role in ("producer", "api"):
        evalsha = [r for r in rules[role] if "evalsha" in r]
        assert evalsha == [evalsha[0]] and f"+evalsha|{sha} " in evalsha[0], (
            f"{role}: scripts/redis-users.sh must allow EVALSHA of WRITE_ROUND ({sha}) and "
            f"nothing else: {evalsha}"
        )
    assert not any("eval " in r or r == "+eval" for role in ROLES for r in rules[role])
    assert rules["default"][0] == "off"


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("REDIS_PRODUCER_PASSWORD", "", "REDIS_PRODUCER_PASSWORD is not set"),
        ("REDIS_API_PASSWORD", "short", "at least 16"),
        ("REDIS_ADMIN_PASSWORD", "a" * 20 + "@evil", "URL-safe"),
        ("REDIS_PIPELINE_PASSWORD", "a" * 20 + " ~* +@all", "URL-safe"),
        ("REDIS_NOTIFIER_PASSWORD", "a" * 20 + "\nuser x on nopass ~* +@all", "URL-safe"),
        ("REDIS_PRODUCER_PASSWORD", "$(touch /tmp/x)aaaaaaaaaaaaaaaaaaaaa", "URL-safe"),
        ("QESMON_KEY_PREFIX", "qes ~* +@all", "QESMON_KEY_PREFIX"),
        ("QESMON_KEY_PREFIX", "*", "QESMON_KEY_PREFIX"),
        ("QESMON_KEY_PREFIX", "qes:metrics", "QESMON_KEY_PREFIX"),
        ("QESMON_KEY_PREFIX", "q" * 51, "QESMON_KEY_PREFIX"),
    ],
)
def test_the_script_refuses_passwords_and_prefixes_that_would_change_the_rules(
    variable: str, value: str, complaint: str
) -> None:
    secret = passwords()
    prefix = "qes"
    if variable == "QESMON_KEY_PREFIX":
        prefix = value
    else:
        secret[variable.removeprefix("REDIS_").removesuffix("_PASSWORD").lower()] = value
    done = render(prefix, secret)
    assert done.returncode != 0 and done.stdout == ""
    assert complaint in done.stderr


# -- the producer ----------------------------------------------------------------------------


#: every way of naming the streams the SDK accepts (its round markers follow the first name)
STREAM_SPECS = {
    "one stream": lambda p: StreamKeys(p, 1),
    "four shards": lambda p: StreamKeys(p, 4),
    "shard names": lambda p: StreamKeys(p, 4).metrics,
    "a name": lambda p: f"{p}:metrics",
    "the backfill stream": lambda p: StreamKeys(p).backfill,
}


@pytest.mark.parametrize("spec", STREAM_SPECS)
async def test_the_producer_pushes_through_the_sdk(
    settings: Settings, users: dict[str, str], redis_client: redis.Redis, spec: str
) -> None:
    streams = STREAM_SPECS[spec](settings.key_prefix)
    tenants = [f"tenant-{i}" for i in range(40)]
    async with MetricsCollector(users["producer"], streams=streams, batch_size=7) as collector:
        for i, tenant in enumerate(tenants * 5):
            await collector.record_metric("usage", "acl_events", float(i), tenant_id=tenant)
    stats = collector.stats
    assert (stats.sent, stats.dropped, stats.flush_errors) == (200, 0, 0), stats.last_error
    names = streams.metrics if isinstance(streams, StreamKeys) else streams
    events = 0
    for stream in [names] if isinstance(names, str) else names:
        for _, fields in redis_client.xrange(stream):
            events += len(json.loads(fields["events"])) if "events" in fields else 1
    assert events == 200


def test_the_producer_appends_with_plain_xadd_as_any_language_does(
    settings: Settings, users: dict[str, str], redis_client: redis.Redis
) -> None:
    producer = redis.Redis.from_url(users["producer"], decode_responses=True)
    assert producer.ping()
    shards = StreamKeys(settings.key_prefix, 1024).metrics  # numbers of 1 to 4 digits
    for stream in (*shards[::341], settings.streams.backfill):
        assert producer.xadd(stream, {"name": "by_hand", "value": "1"}, maxlen=1000)
        assert redis_client.xlen(stream) == 1
    producer.close()


def test_a_retried_round_is_written_once_under_the_producer_user(
    settings: Settings, users: dict[str, str], redis_client: redis.Redis
) -> None:
    producer = redis.Redis.from_url(users["producer"], decode_responses=True)
    sha = producer.script_load(WRITE_ROUND)  # what the SDK does after a Redis restart
    marker, stream = settings.streams.key("sdk", "p1"), settings.streams.metrics[0]
    args = (2, marker, stream, 1, 60, 0, 1, "f", '[["name","x","value","1"]]')
    assert producer.evalsha(sha, *args) == 1
    assert producer.evalsha(sha, *args) == -1  # the same round again: already written
    assert redis_client.xlen(stream) == 1
    producer.close()


#: what a producer must never do ({p} is the key prefix)
REFUSED = [
    ("XREAD", "STREAMS", "{p}:metrics", "0"),
    ("XREAD", "STREAMS", "{p}:metrics:backfill", "0"),
    ("XRANGE", "{p}:metrics", "-", "+"),
    ("XREVRANGE", "{p}:metrics:0", "+", "-"),
    ("XLEN", "{p}:metrics"),
    ("XINFO", "STREAM", "{p}:metrics"),
    ("XGROUP", "CREATE", "{p}:metrics", "spy", "0"),
    ("XREADGROUP", "GROUP", "spy", "c", "STREAMS", "{p}:metrics", ">"),
    ("XDEL", "{p}:metrics", "1-1"),
    ("XTRIM", "{p}:metrics", "MAXLEN", "0"),
    ("DEL", "{p}:metrics"),
    ("SET", "{p}:metrics", "overwritten"),
    ("RENAME", "{p}:metrics", "{p}:gone"),
    ("GET", "{p}:other"),
    ("SET", "{p}:other", "x"),
    ("GET", "{p}:live:session_secret"),
    ("HGETALL", "{p}:health:pipeline"),
    ("HSET", "{p}:health:notifier", "heartbeat", "1"),
    ("XADD", "{p}:alerts", "*", "rule_id", "forged", "to_state", "firing"),
    ("XADD", "{p}:metrics:dead", "*", "error", "forged"),
    ("XADD", "{p}:sdk:marker", "*", "a", "b"),
    ("XADD", "{p}x:metrics", "*", "name", "x", "value", "1"),
    ("PUBLISH", "{p}:live", "{}"),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "appendonly", "no"),
    ("ACL", "LIST"),
    ("CLIENT", "LIST"),
    ("FLUSHALL",),
    ("SCRIPT", "FLUSH"),
    ("EVAL", "return redis.call('GET', KEYS[1])", "1", "{p}:live:session_secret"),
    ("FUNCTION", "LIST"),
]


@pytest.mark.parametrize("command", REFUSED, ids=[" ".join(c[:2]) for c in REFUSED])
def test_the_producer_may_not(
    settings: Settings,
    users: dict[str, str],
    redis_client: redis.Redis,
    command: tuple[str, ...],
) -> None:
    stream = settings.streams.metrics[0]
    redis_client.xadd(stream, {"name": "x", "value": "1"})
    redis_client.set(settings.streams.key("live", "session_secret"), "s3cret")
    producer = redis.Redis.from_url(users["producer"], decode_responses=True)
    args = [part.replace("{p}", settings.key_prefix) for part in command]
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.execute_command(*args)
    producer.close()
    assert redis_client.type(stream) == "stream" and redis_client.xlen(stream) == 1
    assert not redis_client.exists(settings.streams.alerts)


def test_the_producer_may_load_a_script_but_run_only_the_sdk_one_on_its_own_keys(
    settings: Settings, users: dict[str, str], redis_client: redis.Redis
) -> None:
    producer = redis.Redis.from_url(users["producer"], decode_responses=True)
    other = producer.script_load("return redis.call('GET', KEYS[1])")
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.evalsha(other, 1, settings.streams.key("live", "session_secret"))
    sha = producer.script_load(WRITE_ROUND)
    alerts = settings.streams.alerts
    forged = (1, 60, 0, 1, "f", '[["rule_id","forged"]]')
    with pytest.raises(redis.exceptions.NoPermissionError):  # the script aimed at qes:alerts
        producer.evalsha(sha, 2, settings.streams.key("sdk", "p"), alerts, *forged)
    # a stream given as the marker: the script's own GET/SET of it are refused inside
    stream = settings.streams.metrics[0]
    with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
        producer.evalsha(sha, 2, stream, stream, *forged)
    producer.close()
    assert not redis_client.exists(alerts, stream)


def test_only_the_api_user_reads_the_live_session_secret(
    settings: Settings, users: dict[str, str]
) -> None:
    key = settings.streams.key("live", "session_secret")
    api = redis.Redis.from_url(users["api"], decode_responses=True)
    assert api.set(key, "s3cret", nx=True) and api.get(key) == "s3cret"
    api.close()
    for role in ("producer", "pipeline", "notifier"):
        client = redis.Redis.from_url(users[role], decode_responses=True)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get(key)
        client.close()


def test_no_user_but_admin_runs_administrative_commands(
    settings: Settings, users: dict[str, str]
) -> None:
    for role, url in users.items():
        client = redis.Redis.from_url(url, decode_responses=True)
        for command in (("KEYS", "*"), ("CONFIG", "GET", "*"), ("ACL", "LIST"), ("FLUSHDB",)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        assert client.ping(), role
        client.close()


# -- qesmon up: each child its own user -----------------------------------------------------

PROBE_RULE = """\
id: acl_probe
name: ACL probe
severity: warning
metric: acl_probe
condition: value > threshold
threshold: 0
for: 0s
window: 10s
"""


def _get(url: str, body: dict[str, Any] | None = None, key: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_up_runs_the_pipeline_notifier_and_api_each_as_its_own_user(
    settings: Settings,
    users: dict[str, str],
    redis_client: redis.Redis,
    db: psycopg.Connection[tuple[object, ...]],
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acl_probe.yaml").write_text(PROBE_RULE)
    usettings = replace_settings(
        settings, rules_dir=rules, pipeline=dict(watermark_wait=0.5, snapshot_interval=1)
    )
    api_port, metrics_port = free_port(), free_port()
    env = settings_env(
        usettings,
        API_PORT=str(api_port),
        PROMETHEUS_METRICS_PORT=str(metrics_port),
        RECOVERY_DIR=str(tmp_path / "recovery"),
        STREAM_TRIM_AFTER_SECONDS="1",
        RESOURCE_MONITORING_INTERVAL="0.5",
        QESMON_DEMO="0",
        QESMON_PIPELINE_REDIS_URL=users["pipeline"],
        QESMON_NOTIFIER_REDIS_URL=users["notifier"],
        QESMON_API_REDIS_URL=users["api"],
        QESMON_PRODUCER_REDIS_URL=users["producer"],
        QESMON_PRIVATE_REDIS_URL=settings.redis_url,
        LOG_LEVEL="INFO",
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    key = create_key_sync(db, role="admin", name="acl test")
    keys = usettings.streams
    api = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "cli", "up", "--no-demo"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )

    def alive() -> bool:
        assert up.poll() is None, log.read_text()
        return True

    async def produce(stop: float) -> None:
        async with MetricsCollector(users["producer"], streams=keys) as collector:
            while time.monotonic() < stop and not done():
                alive()
                await collector.record_metric("custom", "acl_probe", 1.0)
                await asyncio.sleep(0.3)
        assert collector.stats.flush_errors == 0, collector.stats.last_error

    def rollups(name: str) -> bool:
        row = db.execute("SELECT count(*) FROM metrics_rollup WHERE name = %s", (name,)).fetchone()
        return row is not None and int(str(row[0])) > 0

    def notified() -> bool:
        groups = redis_client.xinfo_groups(keys.alerts)
        group = next((g for g in groups if g["name"] == GROUP), None)
        return group is not None and group["pending"] == 0 and group["entries-read"] >= 2

    checks = {
        "rollups of the producer's events (pipeline)": lambda: rollups("acl_probe"),
        "rollups of the resource monitor (api's SDK)": lambda: rollups("cpu_usage"),
        "the bad entry's dead letter (pipeline)": lambda: redis_client.xlen(keys.dead) > 0,
        "an alert transition (pipeline)": lambda: redis_client.xlen(keys.alerts) > 1,
        "the forged alert entry parked (notifier)": lambda: redis_client.exists(
            keys.key("alerts", "dead")
        ),
        "every alert entry acknowledged (notifier)": notified,
        "live windows (pipeline)": lambda: any(
            redis_client.scan_iter(keys.key("live", "windows", "*"))
        ),
        "the consumed entries trimmed (pipeline)": lambda: trimmed(keys.metrics[0]),
    }

    def trimmed(stream: str) -> bool:
        info = redis_client.xinfo_stream(stream)
        return int(info["length"]) < int(info["entries-added"])

    def done() -> bool:
        return all(check() for check in checks.values())

    try:
        wait_for(lambda: alive() and _get(f"{api}/api/v1/metrics/health") == 200, 60, "healthy")
        with redis.Redis.from_url(users["producer"]) as producer:
            producer.xadd(keys.metrics[0], {"name": "bad name"})
        redis_client.xadd(keys.alerts, {"junk": "forged by a test"})
        record = {"name": "acl_recorded", "value": 1}
        assert _get(f"{api}/api/v1/metrics/record", record, key) == 202
        assert _get(f"{api}/live/session", {"key": key}) == 200
        assert _get(f"http://127.0.0.1:{metrics_port}/metrics") == 200
        asyncio.run(produce(time.monotonic() + 90))
        missing = [what for what, check in checks.items() if not check()]
        assert not missing, missing
        assert _get(f"{api}/api/v1/metrics/health") == 200

        children = {
            name: child
            for child in psutil.Process(up.pid).children()
            for name in ("pipeline", "notifier", "api")
            if child.cmdline()[-1] == name
        }
        assert set(children) == {"pipeline", "notifier", "api"}
        for name, child in children.items():
            environ = child.environ()
            assert environ["REDIS_URL"] == users[name], name
            held = {k for k in environ if k.endswith("_REDIS_URL") and k != "REDIS_URL"}
            assert held == set(), f"{name} holds other credentials: {held}"
        connected = {
            c["user"] for c in redis_client.client_list() if c["user"].startswith(keys.prefix)
        }
        assert connected >= {f"{keys.prefix}-{n}" for n in ("pipeline", "notifier", "api")}
        names = {f"{keys.prefix}-{role}" for role in ROLES}
        assert refusals(redis_client, names) == []
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, log.read_text()
    finally:
        if up.poll() is None:
            kids = psutil.Process(up.pid).children(recursive=True)
            up.kill()
            up.wait()
            for kid in kids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    kid.kill()


# -- docker-compose.yml ----------------------------------------------------------------------


def test_compose_starts_redis_with_the_scripts_users_and_each_service_as_its_own(
    tmp_path: Path,
) -> None:
    """The redis service's entrypoint and command run here (container paths mapped to this
    machine, its docker-entrypoint.sh replaced by one that starts redis-server on a free
    port); then each service's REDIS_URL, resolved from a .env, must log in as its user."""
    services = _compose_services()
    env = {k: "".join(secrets.token_hex(16)) for k in REQUIRED if k.startswith("REDIS_")}
    env.update({k: v for k, v in REQUIRED.items() if k not in env})
    redis_service = services["redis"]
    port = free_port()
    acl = tmp_path / "users.acl"
    assert "./scripts/redis-users.sh:/etc/qesmon/redis-users.sh:ro" in redis_service["volumes"]
    shell, flags, script, name = redis_service["entrypoint"]
    script = script.replace("/etc/qesmon/redis-users.sh", str(USERS_SCRIPT))
    script = script.replace("/tmp/users.acl", str(acl)).replace("$$", "$")
    starter = tmp_path / "docker-entrypoint.sh"
    starter.write_text(
        f'#!/bin/sh\nexec "$@" --port {port} --bind 127.0.0.1 --daemonize yes '
        f"--dir {tmp_path} --pidfile {tmp_path / 'redis.pid'} --logfile {tmp_path / 'redis.log'}\n"
    )
    starter.chmod(0o755)
    command = [part.replace("/tmp/users.acl", str(acl)) for part in redis_service["command"]]
    assert command[-2:] == ["--aclfile", str(acl)]
    server_env = {k: interpolate(str(v), env) for k, v in redis_service["environment"].items()}
    server_env["PATH"] = f"{tmp_path}:{os.environ['PATH']}"
    subprocess.run([shell, flags, script, name, *command], env=server_env, check=True, timeout=30)
    try:
        assert _mode(acl) == 0o600
        assert not any(v in acl.read_text() for k, v in env.items() if k.startswith("REDIS_"))
        health = redis_service["healthcheck"]["test"]
        assert health[0] == "CMD-SHELL"
        probe = health[1].replace("$$", "$").replace("redis-cli", f"redis-cli -p {port}")
        assert subprocess.run(["sh", "-c", probe], env=server_env, timeout=30).returncode == 0

        def here(url: str) -> str:
            return url.replace("@redis:6379", f"@127.0.0.1:{port}").replace(
                "//redis:6379", f"//127.0.0.1:{port}"
            )

        envs = {
            service: {k: interpolate(str(v), env) for k, v in spec["environment"].items()}
            for service, spec in services.items()
            if service in ("migrate", "pipeline", "notifier", "api")
        }
        for service, service_env in envs.items():
            url = service_env["REDIS_URL"]
            client = redis.Redis.from_url(here(url))
            if service == "migrate":  # needs no Redis, gets no user
                assert urlsplit(url).username is None
                with pytest.raises(redis.exceptions.AuthenticationError):
                    client.ping()
            else:  # logs in as the user named after the service, with its .env password
                assert urlsplit(url).username == service and client.ping()
            client.close()
        # the pipeline's healthcheck reads its heartbeat as the pipeline user
        admin = redis.Redis(port=port, username="admin", password=env["REDIS_ADMIN_PASSWORD"])
        admin.hset(
            f"{envs['pipeline']['QESMON_KEY_PREFIX']}:health:pipeline", "heartbeat", time.time()
        )
        admin.close()
        kind, python, flag, code = services["pipeline"]["healthcheck"]["test"]
        assert (kind, python, flag) == ("CMD", "python", "-c")
        check_env = {**envs["pipeline"], "PATH": os.environ["PATH"]}
        check_env["REDIS_URL"] = here(check_env["REDIS_URL"])
        assert (
            subprocess.run([sys.executable, "-c", code], env=check_env, timeout=30).returncode == 0
        )
    finally:
        os.kill(int((tmp_path / "redis.pid").read_text()), signal.SIGTERM)


def test_compose_postgres_wants_a_password_on_every_connection() -> None:
    env = _compose_services()["timescaledb"]["environment"]
    assert env["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert env["POSTGRES_INITDB_ARGS"].split() == [
        "--auth-local=scram-sha-256",
        "--auth-host=scram-sha-256",
    ]
    for name, service in _compose_services().items():
        assert "trust" not in str(service.get("environment", {})), name


# -- the set-up ------------------------------------------------------------------------------


class SetUp:
    """``scripts/setup.sh`` on a directory and ports of its own (stopped and removed after)."""

    def __init__(self) -> None:
        # under /var/tmp, open to the postgres user the server runs as when we are root
        self.var = Path(tempfile.mkdtemp(prefix="qesmon-setup-test-", dir="/var/tmp"))
        self.var.chmod(0o755)
        # the checkout's virtualenv is ready: no pip install from this directory
        (self.var / ".pip-stamp").touch()
        self.redis_port, self.pg_port = free_port(), free_port()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "DATABASE_URL") and not k.startswith("QESMON_")
        }
        self.env.update(
            QESMON_VAR_DIR=str(self.var),
            QESMON_REDIS_PORT=str(self.redis_port),
            QESMON_PG_PORT=str(self.pg_port),
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SETUP), *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def exports(self) -> dict[str, str]:
        """What ``. var/env.sh`` exports."""
        out = subprocess.run(
            ["bash", "-c", '. "$1" && env -0', "-", str(self.var / "env.sh")],
            env={"PATH": os.environ["PATH"]},
            capture_output=True,
            check=True,
        ).stdout.decode()
        return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)

    def close(self) -> None:
        subprocess.run([str(SETUP), "--stop"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.var, ignore_errors=True)


@pytest.fixture
def setup_dir() -> Iterator[SetUp]:
    run = SetUp()
    yield run
    run.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_locked_down(run: SetUp) -> dict[str, str]:
    """What every set-up leaves: secrets only for the owner, PostgreSQL refusing a connection
    without the password, Redis refusing one without a user; the exports."""
    var = run.var
    assert _mode(var / "env.sh") == 0o600
    assert _mode(var / "secrets") == 0o700
    stored = {"pg-postgres", *(f"redis-{name}" for name in ("admin", *ROLES))}
    stored |= {f"pg-{name}" for name in ("pipeline", "notifier", "api")}  # their database roles
    assert {p.name: _mode(p) for p in (var / "secrets").iterdir()} == dict.fromkeys(stored, 0o600)
    assert _mode(var / "redis-users.acl") == 0o600
    env = run.exports()
    password = (var / "secrets" / "pg-postgres").read_text()
    assert env["DATABASE_URL"] == f"postgresql://postgres:{password}@127.0.0.1:{run.pg_port}/qesmon"
    nopass = f"postgresql://postgres@127.0.0.1:{run.pg_port}/qesmon"
    for url in (nopass, nopass.replace("@", ":wrong@", 1)):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(url, connect_timeout=5, sslmode="disable").close()
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        hba = conn.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules").fetchall()
        assert sorted(m for (m,) in hba) == ["peer", "scram-sha-256"]
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
        row = stored.fetchone()
        assert row is not None and str(row[0]).startswith("SCRAM-SHA-256$")
    anonymous = redis.Redis(port=run.redis_port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    admin = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    assert env["REDIS_URL"] == env["QESMON_PRIVATE_REDIS_URL"]
    assert sorted(line.split()[1] for line in admin.acl_list()) == sorted(
        ("default", "admin", *ROLES)
    )
    producer = redis.Redis.from_url(env["QESMON_PRODUCER_REDIS_URL"], decode_responses=True)
    assert producer.xadd("qes:metrics", {"name": "x", "value": "1"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.xrange("qes:metrics")
    for role in ("pipeline", "notifier", "api"):
        url = env[f"QESMON_{role.upper()}_REDIS_URL"]
        assert redis.Redis.from_url(url).ping() and url.startswith(f"redis://{role}:")
        with psycopg.connect(env[f"QESMON_{role.upper()}_DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (f"qesmon_{role}",)
    producer.close()
    admin.close()
    return env


def assert_no_secret_printed(run: SetUp, done: subprocess.CompletedProcess[str]) -> None:
    for path in (run.var / "secrets").iterdir():
        assert path.read_text() not in done.stdout + done.stderr, path.name


def test_a_fresh_set_up_starts_both_servers_with_passwords_and_a_second_run_changes_nothing(
    setup_dir: SetUp,
) -> None:
    first = setup_dir.run()
    assert "the platform's producer URL (append only): redis://producer:***@" in first.stdout
    assert_no_secret_printed(setup_dir, first)
    env = assert_locked_down(setup_dir)
    pids = (setup_dir.var / "redis.pid").read_text(), (setup_dir.var / "pg" / "postmaster.pid")
    postmaster = pids[1].read_text().split()[0]
    again = setup_dir.run()
    assert "Redis already answering" in again.stdout
    assert "PostgreSQL already running" in again.stdout
    assert (setup_dir.var / "redis.pid").read_text() == pids[0]
    assert pids[1].read_text().split()[0] == postmaster
    assert assert_locked_down(setup_dir) == env


def test_a_new_producer_password_is_loaded_into_the_running_redis(setup_dir: SetUp) -> None:
    setup_dir.run()
    old = setup_dir.exports()["QESMON_PRODUCER_REDIS_URL"]
    pid = (setup_dir.var / "redis.pid").read_text()
    (setup_dir.var / "secrets" / "redis-producer").unlink()  # how an operator rotates it
    done = setup_dir.run()
    assert "Redis users changed: reloading" in done.stdout
    assert (setup_dir.var / "redis.pid").read_text() == pid  # no restart
    new = assert_locked_down(setup_dir)["QESMON_PRODUCER_REDIS_URL"]
    assert new != old
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old).ping()


def test_the_set_up_locks_down_the_servers_an_older_set_up_started_and_keeps_their_data(
    setup_dir: SetUp,
) -> None:
    run, var = setup_dir, setup_dir.var
    old_trusting_servers(run)
    (var / "env.sh").write_text(f"export REDIS_URL=redis://127.0.0.1:{run.redis_port}/0\n")
    (var / "env.sh").chmod(0o644)
    done = run.run()
    assert "Redis configuration changed: restarting" in done.stdout
    assert_no_secret_printed(run, done)
    env = assert_locked_down(run)
    admin = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    assert admin.get("kept") == "from before"
    admin.close()
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("from before",)]


def old_trusting_servers(run: SetUp) -> None:
    """A cluster and a Redis as scripts/setup.sh started them before passwords: initdb -A
    trust, no password for postgres, Redis without users; some data in each."""
    var, root = run.var, os.geteuid() == 0
    servers = Path("/usr/lib/postgresql").glob("*/bin/postgres")
    pgbin = max(servers, key=lambda p: int(p.parts[-3])).parent  # the newest, as the set-up

    def as_pg(*argv: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if root else list(argv)
        subprocess.run(command, check=True, capture_output=True, cwd="/", timeout=120)

    for sub in ("pg", "pgsock"):
        (var / sub).mkdir()
    (var / "pg.log").touch()
    if root:
        for sub in ("pg", "pgsock", "pg.log"):
            shutil.chown(var / sub, "postgres", "postgres")
    as_pg(str(pgbin / "initdb"), "-D", str(var / "pg"), "-A", "trust", "-U", "postgres")
    with (var / "pg" / "postgresql.conf").open("a") as conf:
        conf.write("\ninclude_if_exists = 'qesmon.conf'\n")
    (var / "pg" / "qesmon.conf").write_text(
        f"listen_addresses = '127.0.0.1'\nport = {run.pg_port}\n"
        f"unix_socket_directories = '{var / 'pgsock'}'\n"
        "shared_preload_libraries = 'timescaledb'\n"
    )
    as_pg(str(pgbin / "pg_ctl"), "-D", str(var / "pg"), "-l", str(var / "pg.log"), "-w", "start")
    trusted = f"postgresql://postgres@127.0.0.1:{run.pg_port}"
    with psycopg.connect(f"{trusted}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE qesmon")
    with psycopg.connect(f"{trusted}/qesmon", autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('from before')")
    (var / "redis").mkdir()
    (var / "redis.conf").write_text(
        f'bind 127.0.0.1\nport {run.redis_port}\ndaemonize yes\ndir "{var / "redis"}"\n'
        f'pidfile "{var / "redis.pid"}"\nlogfile "{var / "redis.log"}"\nappendonly yes\n'
    )
    subprocess.run(["redis-server", str(var / "redis.conf")], check=True, timeout=30)
    client = redis.Redis(port=run.redis_port)
    wait_for(lambda: _pong(client), 10, "the old Redis")
    client.set("kept", "from before")
    client.close()


def _pong(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False
