"""The database roles of our processes (issue 15): ``qesmon_pipeline``, ``qesmon_notifier`` and
``qesmon_api``, each with only what ``migrations/grants.sql`` gives it, on the real TimescaleDB.

Tests log in as roles of their own that are members of the three (``CREATE ROLE ... IN ROLE
qesmon_pipeline``): they hold exactly the three's privileges, and no test changes a password of
the set-up's. The three are made here, without login, on a server that lacks them (a
``DATABASE_URL`` that scripts/setup.sh did not start). The set-up and compose tests run
``scripts/setup.sh`` on servers of their own and log in as the three themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import pytest
import redis
from psycopg import sql

from api.keys import create_key_sync
from pipeline.sinks import RollupWriter
from qesmon import tiers
from qesmon.alerts import AlertState, AlertTransition, Severity
from qesmon.migrate import (
    GRANTS_FILE,
    MIGRATIONS_DIR,
    PROCESS_ROLES,
    apply_migrations,
    split_statements,
)
from qesmon.sdk.collector import MetricsCollector
from qesmon.series import Series, WindowResult
from qesmon.settings import Settings
from qesmon.sketch import Agg
from rules.store import AlertStore
from tests.conftest import _with_database
from tests.ops import test_credentials as creds
from tests.ops.test_compose import REQUIRED, interpolate
from tests.ops.test_compose import _services as compose_services
from tests.support.faults import free_port
from tests.support.processes import settings_env, wait_for
from tests.support.settings import replace_settings

ROOT = Path(__file__).resolve().parents[2]
GRANTS = MIGRATIONS_DIR / GRANTS_FILE
NAMES = ("pipeline", "notifier", "api")
Db = psycopg.Connection[tuple[Any, ...]]
_LOCK = 7_420_191_015

#: the Redis users of scripts/redis-users.sh, one per role, as tests/ops/test_credentials.py
#: makes them (qesmon up's children log in to both servers as their own)
users = creds.users


# -- the roles ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def process_roles(base_settings: Settings) -> None:
    """The three roles exist on the server and the session's database has their grants."""
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))  # roles are the whole server's
        try:
            for role in PROCESS_ROLES:
                found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if found.fetchone() is None:
                    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    apply_migrations(base_settings.database_url)


@contextlib.contextmanager
def member_roles(database_url: str, tag: str) -> Iterator[dict[str, str]]:
    """Process name -> URL of a login role made for one test, a member of ``qesmon_<name>``
    (dropped afterwards, its connections ended first)."""
    base = urlsplit(database_url)
    logins = {name: f"{tag}_{name}" for name in NAMES}
    urls = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, login in logins.items():
            password = secrets.token_hex(16)
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(login), sql.Literal(password), sql.Identifier(f"qesmon_{name}")
                )
            )
            netloc = f"{login}:{password}@{base.hostname}:{base.port}"
            urls[name] = urlunsplit(base._replace(netloc=netloc))
    try:
        yield urls
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            mine = list(logins.values())

            def gone() -> bool:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = ANY(%s)",
                    (mine,),
                )
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s)", (mine,)
                ).fetchone()
                return row is not None and row[0] == 0

            wait_for(gone, 10, "the test roles' connections to end")
            for login in mine:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))


@pytest.fixture
def roles(settings: Settings, process_roles: None) -> Iterator[dict[str, str]]:
    """Process name -> URL of this test's login role with that process's privileges."""
    with member_roles(settings.database_url, settings.key_prefix) as urls:
        yield urls


def refused(url: str, statement: str) -> bool:
    """Whether the database refuses ``statement`` to the role of ``url`` for want of a
    privilege (anything else that goes wrong fails the test)."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute(statement.encode())
        except psycopg.errors.InsufficientPrivilege:
            return True
        finally:
            conn.rollback()
    return False


# -- every table has its grants decided -------------------------------------------------------

_GRANT = re.compile(r"(?:GRANT|REVOKE)\s.*?\sON\s+(.*?)\s+(?:TO|FROM)\s", re.S | re.I)


def named_in_grants(text: str) -> set[str]:
    """The tables and views the GRANT and REVOKE statements of a grants file name."""
    names: set[str] = set()
    for statement in split_statements(text):
        found = _GRANT.match(statement)
        if found is None:
            continue
        target = found.group(1)
        if re.match(r"(ALL\s|SCHEMA\s|DATABASE\s)", target, re.I):
            continue
        names.update(part.strip() for part in re.sub(r"^TABLE\s", "", target).split(","))
    return names


def relations(db: Db) -> set[str]:
    """Every table and view of the schema (what a migration may add)."""
    rows = db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    )
    return {str(name) for (name,) in rows}


def undecided(db: Db, grants_text: str) -> set[str]:
    return relations(db) - named_in_grants(grants_text)


def test_every_table_and_view_has_its_grants_decided_in_grants_sql(db: Db) -> None:
    text = GRANTS.read_text(encoding="utf-8")
    missing = undecided(db, text)
    assert not missing, (
        f"{sorted(missing)} not named in migrations/grants.sql: say which process may do what"
        " with it (or name it in the file's last REVOKE: no process)"
    )
    assert named_in_grants(text) <= relations(db), "grants.sql names what the schema lacks"
    # it gives to the three roles and nobody else
    for statement in split_statements(text):
        if statement.startswith("GRANT"):
            grantees = re.findall(r"\sTO\s+([\w, ]+?)\s*;$", statement)
            assert grantees, statement
            assert {g.strip() for g in grantees[0].split(",")} <= set(PROCESS_ROLES), statement


@pytest.fixture
def scratch_url(base_settings: Settings, process_roles: None) -> Iterator[str]:
    """A database of its own (migrations applied by the test)."""
    name = f"qesmon_roles_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _with_database(base_settings.database_url, name)
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_a_new_table_is_out_of_every_process_reach_until_grants_sql_names_it(
    scratch_url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    (migrations / "0900_next_month.sql").write_text(
        "CREATE TABLE next_month (id bigint GENERATED ALWAYS AS IDENTITY, note text);\n"
    )
    apply_migrations(scratch_url, migrations)
    with psycopg.connect(scratch_url, autocommit=True) as db:
        assert undecided(db, (migrations / GRANTS_FILE).read_text()) == {"next_month"}
    with member_roles(scratch_url, f"r{uuid.uuid4().hex[:12]}") as urls:
        for name, url in urls.items():
            assert refused(url, "SELECT * FROM next_month"), name
            assert refused(url, "INSERT INTO next_month (note) VALUES ('x')"), name
        # named in grants.sql, the next migrate gives it
        with (migrations / GRANTS_FILE).open("a") as grants:
            grants.write("GRANT SELECT, INSERT ON next_month TO qesmon_api;\n")
        apply_migrations(scratch_url, migrations)
        with psycopg.connect(urls["api"], autocommit=True) as api:
            api.execute("INSERT INTO next_month (note) VALUES ('x')")
            assert api.execute("SELECT note FROM next_month").fetchall() == [("x",)]
        assert refused(urls["pipeline"], "SELECT * FROM next_month")


def rollup(series: Series, width: int, start: float) -> WindowResult:
    agg = Agg()
    for value in (1.0, 2.0, 3.0):
        agg.add(value, True, "user-1")
    return WindowResult(series, width, start - start % width, agg)


def chunk_acls(db: Db) -> list[tuple[str, str, str, str]]:
    """(hypertable, chunk, the chunk's privileges, the hypertable's) for every chunk."""
    rows = db.execute(
        "SELECT h.table_name, c.table_name, coalesce(cc.relacl::text, ''),"
        " coalesce(hc.relacl::text, '')"
        " FROM _timescaledb_catalog.chunk c"
        " JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id"
        " JOIN pg_class cc ON cc.oid = format('%I.%I', c.schema_name, c.table_name)::regclass"
        " JOIN pg_class hc ON hc.oid = format('%I.%I', h.schema_name, h.table_name)::regclass"
        " WHERE NOT c.dropped ORDER BY 1, 2"
    )
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def test_grants_sql_is_the_whole_truth_a_grant_taken_out_is_revoked_on_chunks_too(
    scratch_url: str, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, migrations)
    apply_migrations(scratch_url, migrations)
    with member_roles(scratch_url, f"r{uuid.uuid4().hex[:12]}") as urls:
        writer = RollupWriter(urls["pipeline"])
        writer.write([rollup(Series("x", "custom", "", ()), 10, 1_800_000_000.0)])
        writer.close()
        grants = migrations / GRANTS_FILE
        text = grants.read_text()
        line = "GRANT SELECT, INSERT, UPDATE ON metric_rollups_10s, metric_rollups_1m"
        assert line in text
        grants.write_text(text.replace(line, "GRANT SELECT, INSERT, UPDATE ON metric_rollups_1m"))
        apply_migrations(scratch_url, migrations)
        with psycopg.connect(scratch_url, autocommit=True) as db:
            acls = chunk_acls(db)
        assert all(own == table for _, _, own, table in acls), acls
        chunk = next(c for h, c, _, _ in acls if h == "metric_rollups_10s")
        insert = (
            "INSERT INTO metric_rollups_10s (bucket, width_s, series_id, count, errors, sum,"
            " min, max) VALUES (now(), 10, 1, 1, 0, 1, 1, 1)"
        )
        assert refused(urls["pipeline"], insert)
        assert refused(urls["pipeline"], f"SELECT * FROM _timescaledb_internal.{chunk}")


# -- what each may do: the real code paths -----------------------------------------------------


def test_the_pipeline_role_writes_rollups_into_new_chunks_of_each_tier_and_alert_transitions(
    settings: Settings, roles: dict[str, str], db: Db, redis_client: redis.Redis
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        before = {c for _, c, _, _ in chunk_acls(conn)}
    series = Series("roles_probe", "custom", "tenant-a", (("k", "v"),))
    # far from any other test's rows: every tier gets a chunk that the pipeline's insert creates
    start = datetime(2031, 1, 1, tzinfo=UTC).timestamp() + secrets.randbelow(10_000) * 86400
    writer = RollupWriter(roles["pipeline"])
    try:
        writer.write([rollup(series, width, start) for width in (10, 60, 3600)])
        writer.write([rollup(series, 10, start)])  # the upsert of a written window
    finally:
        writer.close()
    rows = db.execute(
        "SELECT width_s, count FROM metrics_rollup WHERE name = 'roles_probe' ORDER BY 1"
    ).fetchall()
    assert rows == [(10, 3), (60, 3), (3600, 3)]
    acls = chunk_acls(db)
    new = {(h, c) for h, c, _, _ in acls if c not in before}
    assert {h for h, _ in new} == {tiers.tier_for(w).table for w in (10, 60, 3600)}
    assert all(own == table for _, _, own, table in acls), acls
    owners = db.execute(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relname = ANY(%s)",
        ([c for _, c in new],),
    ).fetchall()
    assert owners == [db.execute("SELECT current_user").fetchone()]  # the tables' owner

    store = AlertStore(replace_settings(settings, database_url=roles["pipeline"]))
    common: dict[str, Any] = dict(
        fingerprint="fp-roles", rule_id="r", rule_name="R", severity=Severity.WARNING, value=1.0
    )
    try:
        store.record(
            [
                AlertTransition(
                    from_state=AlertState.INACTIVE, to_state=AlertState.FIRING, at=start, **common
                ),
                AlertTransition(
                    from_state=AlertState.FIRING,
                    to_state=AlertState.RESOLVED,
                    at=start + 60,
                    **common,
                ),
            ]
        )
    finally:
        store.close()
    assert db.execute("SELECT state FROM alerts WHERE fingerprint = 'fp-roles'").fetchall() == [
        ("resolved",)
    ]
    events = db.execute(
        "SELECT to_state, alert_id IS NOT NULL FROM alert_events ORDER BY at"
    ).fetchall()
    assert events == [("firing", True), ("resolved", True)]
    assert redis_client.xlen(settings.streams.alerts) == 2


# -- what each must not do ---------------------------------------------------------------------

#: refused to every process: only `qesmon migrate` changes the schema, only `qesmon keys` makes
#: keys, only `qesmon maintain` deletes and drops chunks
NOBODY = [
    "CREATE TABLE public.mine (a int)",
    "CREATE VIEW public.mine AS SELECT 1",
    "CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA mine",
    "ALTER TABLE alerts ADD COLUMN mine int",
    "DROP TABLE deliveries",
    "DROP VIEW metric_rollups",
    "TRUNCATE alerts CASCADE",
    "TRUNCATE metric_rollups_10s",
    "DELETE FROM alerts",
    "DELETE FROM series",
    "DELETE FROM alert_events",
    "DELETE FROM metric_rollups_1h",
    "SELECT drop_chunks('metric_rollups_10s', older_than => now())",
    "INSERT INTO metric_rollups_1d (bucket, width_s, series_id, count, errors, sum, min, max)"
    " VALUES (now(), 86400, 1, 1, 0, 1, 1, 1)",
    "INSERT INTO api_keys (key_prefix, key_hash, role) VALUES ('qes_x', 'forged', 'admin')",
    "UPDATE api_keys SET role = 'admin'",
    "UPDATE api_keys SET revoked_at = NULL, expires_at = NULL",
    "UPDATE api_keys SET key_hash = 'forged'",
    "DELETE FROM api_keys",
    "SELECT * FROM schema_migrations",
    "DELETE FROM schema_migrations",
    "UPDATE audit_log SET key_name = 'someone else'",
    "DELETE FROM audit_log",
    "UPDATE deliveries SET status = 'sent'",
    "DELETE FROM deliveries",
    "INSERT INTO maintenance (started_at, finished_at, ok) VALUES (now(), now(), true)",
    "SELECT * FROM metrics_rollup",  # Grafana's view: grafana_reader's
    "CREATE ROLE mine",
    "SELECT pg_read_file('/etc/hostname')",
    "COPY alerts TO PROGRAM 'true'",
]
#: and to each its own: the secrets (key hashes, receivers' configs) stay with who needs them
ONLY = {
    "pipeline": [
        "SELECT * FROM api_keys",
        "SELECT * FROM receivers",
        "SELECT * FROM audit_log",
        "SELECT * FROM deliveries",
        "SELECT * FROM notifier_outbox",
        "INSERT INTO deliveries (notification_key, channel, attempt, status)"
        " VALUES ('k', 'webhook', 1, 'sent')",
        "INSERT INTO receivers (tenant_id, name, channel) VALUES ('', 'webhook', 'webhook')",
        "UPDATE notifier_timers SET status = 'cancelled'",
        "SELECT * FROM maintenance",
    ],
    "notifier": [
        "SELECT * FROM api_keys",
        "SELECT * FROM audit_log",
        "SELECT * FROM series",
        "SELECT * FROM metric_rollups_10s",
        "INSERT INTO receivers (tenant_id, name, channel) VALUES ('', 'webhook', 'webhook')",
        "UPDATE receivers SET enabled = false",
        "DELETE FROM receivers",
        "INSERT INTO series (name, type) VALUES ('x', 'custom')",
        "INSERT INTO metric_rollups_10s (bucket, width_s, series_id, count, errors, sum, min,"
        " max) VALUES (now(), 10, 1, 1, 0, 1, 1, 1)",
        "SELECT * FROM deliveries",
        "UPDATE alert_events SET details = '{}'",
    ],
    "api": [
        "INSERT INTO series (name, type) VALUES ('x', 'custom')",
        "UPDATE series SET tenant_id = 'other'",
        "INSERT INTO metric_rollups_10s (bucket, width_s, series_id, count, errors, sum, min,"
        " max) VALUES (now(), 10, 1, 1, 0, 1, 1, 1)",
        "UPDATE metric_rollups_1h SET count = 0",
        "INSERT INTO alerts (fingerprint, rule_id, rule_name, severity, state, started_at)"
        " VALUES ('f', 'r', 'R', 'info', 'firing', now())",
        "UPDATE alert_events SET details = '{}'",
        "SELECT * FROM alert_events",
        "SELECT * FROM audit_log",
        "INSERT INTO notifier_seen_transitions (key) VALUES ('k')",
        "UPDATE notifier_outbox SET status = 'sent'",
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_no_process_may_change_the_schema_make_keys_or_touch_what_is_not_its_own(
    roles: dict[str, str], name: str
) -> None:
    allowed = [s for s in (*NOBODY, *ONLY[name]) if not refused(roles[name], s)]
    assert allowed == [], f"{name} may: {allowed}"


def test_the_api_role_reads_keys_and_stamps_their_last_use_and_nothing_else_of_them(
    settings: Settings, roles: dict[str, str], db: Db
) -> None:
    create_key_sync(db, role="viewer", name="stamped")
    with psycopg.connect(roles["api"], autocommit=True) as api:
        assert api.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)
        api.execute("UPDATE api_keys SET last_used_at = now()")
    assert db.execute("SELECT last_used_at IS NOT NULL FROM api_keys").fetchone() == (True,)
    # only the owner's URL makes keys: `qesmon keys create` as the API's role fails
    done = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--role", "admin"],
        env=settings_env(settings, DATABASE_URL=roles["api"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "permission denied for table api_keys" in done.stderr
    assert db.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)


# -- qesmon up: each child its own role ---------------------------------------------------------

PROBE_RULE = """\
id: roles_probe
name: Roles probe
severity: warning
metric: roles_probe
condition: value > threshold
threshold: 0
for: 0s
window: 10s
"""
ROUTING = """\
routing:
  defaults:
    channels: [webhook]
    group_by: [rule_id]
    group_wait: 1s
"""


class Receiver:
    """A webhook receiver on loopback that keeps what it was sent."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> set[str]:
        return {str(body.get("event")) for body in self.received}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(
    url: str, key: str | None = None, body: Mapping[str, Any] | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


@pytest.mark.timeout(240)
def test_up_runs_each_child_as_its_own_role_and_everything_still_works(
    settings: Settings,
    roles: dict[str, str],
    users: dict[str, str],
    redis_client: redis.Redis,
    db: Db,
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "roles_probe.yaml").write_text(PROBE_RULE)
    (rules / "notifications.yaml").write_text(ROUTING)
    usettings = replace_settings(
        settings, rules_dir=rules, pipeline=dict(watermark_wait=0.5, snapshot_interval=1)
    )
    api_port, metrics_port = free_port(), free_port()
    env = settings_env(
        usettings,
        API_PORT=str(api_port),
        PROMETHEUS_METRICS_PORT=str(metrics_port),
        RECOVERY_DIR=str(tmp_path / "recovery"),
        RESOURCE_MONITORING_INTERVAL="0.5",
        QESMON_DEMO="0",
        **{f"QESMON_{n.upper()}_REDIS_URL": users[n] for n in NAMES},
        **{f"QESMON_{n.upper()}_DATABASE_URL": roles[n] for n in NAMES},
        LOG_LEVEL="INFO",
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    key = create_key_sync(db, role="admin", name="roles test")
    api = f"http://127.0.0.1:{api_port}/api/v1/metrics"
    receiver = Receiver()
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

    def firing_alert() -> int | None:
        status, body = call(f"{api}/alerts", key)
        alerts = body["alerts"] if status == 200 else []
        return next((a["id"] for a in alerts if a["rule_id"] == "roles_probe"), None)

    async def produce(until: Any, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        async with MetricsCollector(users["producer"], streams=usettings.streams) as collector:
            while alive() and not until():
                assert time.monotonic() < deadline, (
                    "no firing notice; qesmon up said:\n" + (log.read_text()[-6000:])
                )
                await collector.record_metric("custom", "roles_probe", 1.0)
                await asyncio.sleep(0.3)

    try:
        wait_for(lambda: alive() and call(f"{api}/health")[0] == 200, 90, "a healthy API")
        # the API's role: a platform receiver (receivers, audit_log) and a test message
        config = {"url": receiver.url, "format": "qesmon"}
        configure = {"channel": "webhook", "config": config}
        assert call(f"{api}/alerts/configure", key, configure)[0] == 200
        status, tested = call(f"{api}/alerts/test?channel=webhook", key, {})
        assert status == 200 and tested["ok"], tested
        # the pipeline's role: rollups and the alert; the notifier's: the firing notice
        asyncio.run(produce(lambda: "firing" in receiver.events()))
        alert = wait_for(firing_alert, 30, "the alert in GET /alerts")
        # the API's role acknowledges (alerts, alert_events, timers, episodes, outbox) and the
        # notifier's delivers the acknowledged notice
        status, acked = call(f"{api}/alerts/{alert}/acknowledge", key, {})
        assert status == 200 and acked["acknowledged_by"], acked
        wait_for(lambda: alive() and "acknowledged" in receiver.events(), 30, "the ack notice")
        # the reports read the rollups and series; /health the maintenance row too
        for report in ("dashboard?days=1", "performance", "business-intelligence"):
            status, body = call(f"{api}/{report}", key)
            assert status == 200, (report, body)
        status, health = call(f"{api}/health")
        assert status == 200 and health["maintenance"]["ran"], health
        assert call(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200

        children = {
            name: child
            for child in psutil.Process(up.pid).children()
            for name in (*NAMES, "maintain")
            if child.cmdline()[-1] == name or child.cmdline()[-3:-2] == [name]
        }
        assert set(children) == {*NAMES, "maintain"}
        for name, child in children.items():
            environ = child.environ()
            own = settings.database_url if name == "maintain" else roles[name]
            given = environ["DATABASE_URL"]  # compared without printing the passwords
            assert (urlsplit(given).username, given == own) == (urlsplit(own).username, True)
            held = {k for k in environ if k.endswith("_DATABASE_URL")}
            assert held == set(), f"{name} holds other roles' URLs: {held}"
        connected = {
            str(u)
            for (u,) in db.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
            )
        }
        logins = {urlsplit(url).username for url in roles.values()}
        assert logins <= connected, connected
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, log.read_text()
    finally:
        receiver.close()
        if up.poll() is None:
            kids = psutil.Process(up.pid).children(recursive=True)
            up.kill()
            up.wait()
            for kid in kids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    kid.kill()
    text = log.read_text()
    assert "permission denied" not in text and "InsufficientPrivilege" not in text, text[-3000:]
    sent = db.execute(
        "SELECT DISTINCT channel, status FROM deliveries WHERE notification_key NOT LIKE 'test:%'"
    ).fetchall()
    assert sent == [("webhook", "sent")]
    assert db.execute(
        "SELECT count(*) FROM deliveries WHERE notification_key LIKE 'test:%'"
    ).fetchone() == (1,)
    assert db.execute("SELECT action FROM audit_log ORDER BY id").fetchall() == [
        ("configure",),
        ("test",),
    ]
    assert db.execute(
        "SELECT count(*) FROM metrics_rollup WHERE name = 'roles_probe'"
    ).fetchone() != (0,)
    stamped = db.execute("SELECT last_used_at IS NOT NULL FROM api_keys WHERE name = 'roles test'")
    assert stamped.fetchone() == (True,)


# -- the set-up and compose ----------------------------------------------------------------------


@pytest.fixture
def setup_dir() -> Iterator[creds.SetUp]:
    run = creds.SetUp()
    yield run
    run.close()


def migrate(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        env={**env, "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def current_user(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    return str(row[0]) if row else ""


def test_the_set_up_makes_each_process_a_role_with_a_password_and_migrate_grants_its_tables(
    setup_dir: creds.SetUp,
) -> None:
    run = setup_dir
    done = run.run()
    creds.assert_no_secret_printed(run, done)
    env = run.exports()
    for name in NAMES:
        secret = run.var / "secrets" / f"pg-{name}"
        assert creds._mode(secret) == 0o600
        url = env[f"QESMON_{name.upper()}_DATABASE_URL"]
        assert (
            url == f"postgresql://qesmon_{name}:{secret.read_text()}@127.0.0.1:{run.pg_port}/qesmon"
        )
        assert current_user(url) == f"qesmon_{name}"
        with pytest.raises(psycopg.OperationalError, match="password"):
            current_user(url.replace(secret.read_text(), "wrong"))
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
        attributes = admin.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolinherit, rolcreaterole, rolcreatedb,"
            " rolreplication, rolbypassrls, left(rolpassword, 14) FROM pg_authid"
            " WHERE rolname LIKE 'qesmon%' ORDER BY 1"
        ).fetchall()
    assert attributes == [
        (role, True, False, False, False, False, False, False, "SCRAM-SHA-256$")
        for role in sorted(PROCESS_ROLES)
    ]

    done = migrate(env)
    assert done.returncode == 0 and "applied grants.sql" in done.stderr, done.stderr
    pipeline = env["QESMON_PIPELINE_DATABASE_URL"]
    with psycopg.connect(pipeline, autocommit=True) as conn:
        conn.execute("INSERT INTO series (name, type) VALUES ('x', 'custom')")
    assert refused(pipeline, "SELECT * FROM api_keys")
    assert refused(
        env["QESMON_API_DATABASE_URL"],
        "INSERT INTO api_keys (key_prefix, key_hash, role) VALUES ('p', 'h', 'admin')",
    )

    # a new password: delete its file and run the set-up again; the old one stops working
    old = env["QESMON_API_DATABASE_URL"]
    (run.var / "secrets" / "pg-api").unlink()
    run.run()
    env = run.exports()
    assert env["QESMON_API_DATABASE_URL"] != old
    assert current_user(env["QESMON_API_DATABASE_URL"]) == "qesmon_api"
    with pytest.raises(psycopg.OperationalError, match="password"):
        current_user(old)
    assert env["QESMON_PIPELINE_DATABASE_URL"] == pipeline

    # grants.sql names all three: with one missing, migrate says so and changes nothing
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
        admin.execute("DROP OWNED BY qesmon_notifier")
        admin.execute("DROP ROLE qesmon_notifier")
    done = migrate(env)
    assert done.returncode == 1, done.stderr
    assert "role qesmon_notifier does not exist" in done.stderr
    assert "scripts/pg-roles.sql" in done.stderr
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as admin:
        admin.execute("DROP OWNED BY qesmon_pipeline, qesmon_api")
        admin.execute("DROP ROLE qesmon_pipeline, qesmon_api")
    done = migrate(env)  # none at all: every process uses DATABASE_URL's role
    assert done.returncode == 0 and "grants.sql not applied" in done.stderr, done.stderr
    run.run()
    assert "applied grants.sql" in migrate(run.exports()).stderr
    assert current_user(run.exports()["QESMON_NOTIFIER_DATABASE_URL"]) == "qesmon_notifier"


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("POSTGRES_API_PASSWORD", None, "POSTGRES_API_PASSWORD is not set"),
        ("POSTGRES_PIPELINE_PASSWORD", "", "at least 16 characters"),
        ("POSTGRES_NOTIFIER_PASSWORD", "short", "at least 16 characters"),
    ],
)
def test_the_roles_script_refuses_a_missing_or_short_password(
    variable: str, value: str | None, complaint: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTGRES_")}
    env.update({f"POSTGRES_{n.upper()}_PASSWORD": secrets.token_hex(16) for n in NAMES})
    if value is None:
        del env[variable]
    else:
        env[variable] = value
    # no server needed: the script stops before its first statement that would reach one
    done = subprocess.run(
        [
            psql(),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(ROOT / "scripts" / "pg-roles.sql"),
            os.environ["DATABASE_URL"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and complaint in done.stderr, done.stderr


def psql() -> str:
    found = shutil.which("psql") or next(Path("/usr/lib/postgresql").glob("*/bin/psql"), None)
    assert found, "psql not found"
    return str(found)


def test_compose_makes_the_roles_before_migrate_and_each_service_logs_in_as_its_own(
    setup_dir: creds.SetUp,
) -> None:
    services = compose_services()
    roles_service = services["db-roles"]
    assert services["migrate"]["depends_on"]["db-roles"]["condition"] == (
        "service_completed_successfully"
    )
    assert roles_service["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert "./scripts/pg-roles.sql:/sql/pg-roles.sql:ro" in roles_service["volumes"]
    setup_dir.run()
    admin = setup_dir.exports()["DATABASE_URL"]
    dotenv = {k: secrets.token_hex(16) for k in REQUIRED if k.startswith("POSTGRES_")}
    dotenv.update({k: v for k, v in REQUIRED.items() if k not in dotenv})
    dotenv["POSTGRES_PASSWORD"] = urlsplit(admin).password or ""

    def here(service_env: Mapping[str, Any]) -> dict[str, str]:
        """A service's environment with the compose network's timescaledb at this cluster."""
        out = {k: interpolate(str(v), dotenv) for k, v in service_env.items()}
        out["PATH"] = os.environ["PATH"]
        return out

    # the compose owner is `qesmon`; the set-up's is `postgres`
    env = {**here(roles_service["environment"]), "PGHOST": "127.0.0.1"}
    env.update(PGPORT=str(setup_dir.pg_port), PGUSER="postgres")
    command = [
        part.replace("/sql/pg-roles.sql", str(ROOT / "scripts" / "pg-roles.sql"))
        for part in roles_service["entrypoint"]
    ]
    command[0] = psql() if command[0] == "psql" else command[0]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=60)
    apply_migrations(admin)
    for name in (*NAMES, "migrate"):
        service_env = here(services[name]["environment"])
        url = service_env["DATABASE_URL"].replace(
            "@timescaledb:5432", f"@127.0.0.1:{setup_dir.pg_port}"
        )
        if name == "migrate":  # the owner: the compose file's POSTGRES_USER
            assert urlsplit(url).username == services["timescaledb"]["environment"]["POSTGRES_USER"]
            assert service_env["PGPASSWORD"] == dotenv["POSTGRES_PASSWORD"]
            continue
        assert service_env["PGPASSWORD"] == dotenv[f"POSTGRES_{name.upper()}_PASSWORD"]
        with psycopg.connect(url, password=service_env["PGPASSWORD"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (f"qesmon_{name}",)
