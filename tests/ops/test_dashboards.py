"""The provisioned Grafana dashboards against the real TimescaleDB, fed by the real pipeline.

A generated workload is pushed into Redis and aggregated by ``qesmon pipeline``; alert
episodes are written as the rule engine and notifier record them. Then every SQL panel and
annotation of every dashboard is expanded exactly as Grafana would (variables, then macros)
and run as the SELECT-only role of ``grafana/sql/grafana_reader.sql``: each must return rows
with values, so a typo in a column, an event name or a label key fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
import redis

from qesmon import vocabulary as v
from qesmon.encode import encode_batch
from qesmon.migrate import apply_migrations
from qesmon.settings import Settings
from tests.ops import workload
from tests.ops.grafana_sql import Expander, ExpansionError, Scenario, sql_targets
from tests.support.processes import QesmonProcess, settings_env, wait_for
from tests.support.settings import replace_settings

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards" / "qes-monitoring"
READER_SQL = ROOT / "grafana" / "sql" / "grafana_reader.sql"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
SEED_DASHBOARDS = {
    "Business Overview",
    "System Performance",
    "Infrastructure",
    "Security",
    "Usage Analytics",
}
SEED_VARIABLES = {"tenant_id", "time_range", "service", "severity"}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _with(
    url: str, *, dbname: str | None = None, user: str | None = None, password: str = ""
) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if user is not None:
        netloc = f"{quote(user)}:{quote(password)}@{netloc}" if password else f"{user}@{netloc}"
    elif "@" in parts.netloc:
        netloc = parts.netloc
    path = "/" + dbname if dbname else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


@dataclass(frozen=True)
class OpsData:
    """The loaded database: owner and reader URLs, and the workload that went in."""

    owner_url: str
    reader_url: str
    load: workload.Workload
    now: datetime


def _run_pipeline_until_done(settings: Settings, load: workload.Workload, tmp: Path) -> None:
    """Run ``qesmon pipeline`` until every event is in the 10 s and 1 min rollups, then stop it."""
    rules = tmp / "no-rules"
    rules.mkdir()
    quick = replace_settings(settings, rules_dir=rules, pipeline=dict(snapshot_interval=1))
    env = settings_env(quick)
    args = ["pipeline", "--recovery-dir", str(tmp / "recovery")]
    proc = QesmonProcess(args, env, tmp / "pipeline.log").start()
    expected = len(load.events)

    def all_counted() -> bool:
        assert proc.alive(), f"the pipeline exited:\n{proc.log()[-3000:]}"
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT width_s, sum(count)::bigint FROM metric_rollups"
                " WHERE width_s IN (10, 60) GROUP BY 1"
            ).fetchall()
        return {int(w): int(c) for w, c in rows} == {10: expected, 60: expected}

    try:
        wait_for(all_counted, 90, f"the pipeline to aggregate {expected} events", interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{proc.log()[-3000:]}") from None
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ops_data(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpsData]:
    """A database of its own, filled through Redis and the real pipeline, plus the reader role."""
    server_url = base_settings.database_url
    dbname = f"qesmon_ops_{uuid.uuid4().hex[:10]}"
    reader = f"grafana_reader_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    owner_url = _with(server_url, dbname=dbname)
    settings = Settings(
        redis_url=base_settings.redis_url,
        database_url=owner_url,
        key_prefix=f"ops{uuid.uuid4().hex[:8]}",
    )
    client = redis.Redis.from_url(settings.redis_url)
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    try:
        apply_migrations(owner_url)
        now = datetime.now(UTC)
        load = workload.generate(now.timestamp())
        stream = settings.streams.metrics[0]
        pipe = client.pipeline(transaction=False)
        for batch in load.batches():
            pipe.xadd(stream, encode_batch(batch))  # type: ignore[arg-type]
        pipe.execute()
        _run_pipeline_until_done(settings, load, tmp_path_factory.mktemp("pipeline"))
        assert client.xlen(settings.streams.dead) == 0, "the workload produced dead letters"
        with psycopg.connect(owner_url, autocommit=True) as conn:
            workload.insert_alerts(conn, load.start, load.end)
        subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"reader={reader}",
             "-f", str(READER_SQL), owner_url],
            env={**os.environ, "GRAFANA_DB_PASSWORD": password},
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield OpsData(owner_url, _with(owner_url, user=reader, password=password), load, now)
    finally:
        keys = list(client.scan_iter(match=f"{settings.key_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        with psycopg.connect(server_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reader,)).fetchone()
            if exists:
                with psycopg.connect(owner_url, autocommit=True) as db:
                    db.execute(f'DROP OWNED BY "{reader}"')
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            if exists:
                conn.execute(f'DROP ROLE IF EXISTS "{reader}"')


def scenarios(data: OpsData) -> list[Scenario]:
    first_tenant, first_service, first_host = (
        workload.TENANTS[0],
        workload.SERVICES[0],
        workload.HOSTS[0],
    )
    full_start = datetime.fromtimestamp(data.load.start - 120, UTC)
    return [
        Scenario("whole workload, 1 min", full_start, data.now, {"time_range": "1m"}, "1m"),
        Scenario(
            "last 7 days, auto resolution, one tenant, service, host and severity",
            data.now - timedelta(days=7),
            data.now,
            {
                "tenant_id": first_tenant,
                "service": first_service,
                "host": first_host,
                "severity": "critical",
            },
            "2h",
        ),
        Scenario(
            "last 30 minutes, 10 s",
            data.now - timedelta(minutes=30),
            data.now,
            {"time_range": "10s"},
            "10s",
        ),
    ]


def variable_options(
    conn: psycopg.Connection[Any], dashboard: Mapping[str, Any]
) -> dict[str, list[str]]:
    """Run each query variable's own SQL, as Grafana does to fill its drop-down."""
    options: dict[str, list[str]] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "timescaledb", var["name"]
            rows = conn.execute(var["query"]).fetchall()
            options[var["name"]] = [str(r[0]) for r in rows if r[0] is not None]
            assert options[var["name"]], f"variable {var['name']} has no options"
    return options


def check_result(
    where: str, fmt: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """What a panel must show: rows, every column filled somewhere, numbers not all zero."""
    assert rows, f"{where}: no rows"
    if fmt == "time_series":
        assert columns[0] == "time", f"{where}: time series needs a first column named time"
        times = [r[0] for r in rows]
        assert times == sorted(times), f"{where}: rows not sorted by time"
    for i, column in enumerate(columns):
        values = [r[i] for r in rows if r[i] is not None]
        assert values, f"{where}: column {column!r} is always NULL"
        numbers = [
            x for x in values if isinstance(x, int | float | Decimal) and not isinstance(x, bool)
        ]
        if numbers and len(numbers) == len(values):
            assert any(x != 0 for x in numbers), f"{where}: column {column!r} is always 0"


def run_panel(
    conn: psycopg.Connection[Any], where: str, fmt: str, sql: str
) -> list[tuple[Any, ...]]:
    try:
        cur = conn.execute(sql)
    except psycopg.Error as exc:
        raise AssertionError(f"{where}: {exc}\n{sql}") from None
    columns = [c.name for c in cur.description or ()]
    rows = cur.fetchall()
    check_result(where, fmt, columns, rows)
    return rows


# ---------------------------------------------------------------- static checks --


def test_dashboard_files_are_up_to_date_with_their_builder() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", ROOT / "grafana" / "build_dashboards.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert sorted(rendered) == [p.name for p in DASHBOARD_FILES]
    for path in DASHBOARD_FILES:
        assert path.read_text(encoding="utf-8") == rendered[path.name], (
            f"{path.name} differs from grafana/build_dashboards.py: run it and commit"
        )


def test_the_five_seed_dashboards_have_fixed_uids_valid_panels_and_used_variables() -> None:
    dashboards = [_load(p) for p in DASHBOARD_FILES]
    assert {d["title"] for d in dashboards} == SEED_DASHBOARDS
    uids = [d["uid"] for d in dashboards]
    assert len(set(uids)) == 5 and all(re.fullmatch(r"qes-[a-z-]+", u) for u in uids)
    seen_variables: set[str] = set()
    for d in dashboards:
        assert d["id"] is None, d["title"]
        names = [var["name"] for var in d["templating"]["list"]]
        seen_variables.update(names)
        queries = [sql for _, _, sql in sql_targets(d)]
        for name in names:
            assert any(re.search(rf"\$\{{?{name}\b", q) for q in queries), (
                f"{d['title']}: variable {name} is defined but no panel uses it"
            )
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))
        for panel in d["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            assert panel["datasource"]["uid"] in ("timescaledb", "prometheus"), panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], panel["title"]
    assert seen_variables >= SEED_VARIABLES


def test_percentile_panels_show_bounds_and_never_average_percentiles() -> None:
    for path in DASHBOARD_FILES:
        for panel in _load(path)["panels"]:
            for target in panel.get("targets", []):
                sql = target.get("rawSql", "")
                assert not re.search(r"\b(avg|sum)\s*\(\s*p(50|95|99)\s*\)", sql, re.I), (
                    f"{path.name} {panel['title']!r} averages or adds percentiles"
                )
                if re.search(r"\bp(50|95|99)\b", sql):
                    assert "upper bound" in (panel["title"] + sql).lower(), (
                        f"{path.name} {panel['title']!r} shows percentiles without saying "
                        "they are upper bounds"
                    )


def test_the_expander_rejects_unknown_variables_and_macros() -> None:
    dashboard = _load(DASHBOARD_DIR / "security.json")
    now = datetime.now(UTC)
    scenario = Scenario("x", now - timedelta(hours=1), now, {})
    expander = Expander(dashboard, scenario, {"tenant_id": ["a", "o'b"]})
    assert expander.expand("tenant_id IN ($tenant_id)") == "tenant_id IN ('a','o''b')"
    assert expander.expand("x = ${tenant_id:sqlstring}") == "x = 'a','o''b'"
    grouped = expander.expand("$__timeGroupAlias(bucket, $time_range)")
    assert grouped == "time_bucket('60.000s',bucket) AS \"time\""
    assert expander.expand("$__timeFilter(at)").startswith("at BETWEEN '20")
    with pytest.raises(ExpansionError, match="unknown variable"):
        expander.expand("tenant_id IN ($tenant)")
    with pytest.raises(ExpansionError, match="unknown macro"):
        expander.expand("$__timeFiltr(bucket)")


# ---------------------------------------------------------------- against the database --


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=[p.stem for p in DASHBOARD_FILES])
def test_every_sql_panel_returns_rows_for_the_workload(ops_data: OpsData, path: Path) -> None:
    dashboard = _load(path)
    targets = sql_targets(dashboard)
    assert targets
    with psycopg.connect(ops_data.reader_url, autocommit=True) as conn:
        options = variable_options(conn, dashboard)
        for scenario in scenarios(ops_data):
            expander = Expander(dashboard, scenario, options)
            for where, fmt, raw in targets:
                run_panel(conn, f"{path.stem} [{scenario.name}] {where}", fmt, expander.expand(raw))


def _panel_sql(name: str, title: str) -> str:
    for where, _, raw in sql_targets(_load(DASHBOARD_DIR / name)):
        if where == f"panel {title!r}":
            return raw
    raise AssertionError(f"{name} has no panel {title!r}")


def test_headline_panels_equal_the_workload_totals(ops_data: OpsData) -> None:
    events = ops_data.load.events
    http = [e for e in events if e["name"] == v.HTTP_REQUEST]
    payments = [e for e in events if e["name"] == v.SUBSCRIPTION_PAYMENT]
    expected: dict[tuple[str, str], list[tuple[Any, ...]]] = {
        ("system-performance.json", "Requests"): [(len(http),)],
        ("system-performance.json", "Error rate"): [
            (100.0 * sum(1 for e in http if e.get("success") is False) / len(http),)
        ],
        ("security.json", "Authentication failures"): [
            (sum(1 for e in events if e["name"] == v.AUTH_FAILED),)
        ],
        ("business-overview.json", "New users"): [
            (sum(1 for e in events if e["name"] == v.USER_SIGNUP),)
        ],
        ("business-overview.json", "Revenue by currency"): [
            (cur, sum(e["value"] for e in payments if e["labels"]["currency"] == cur))
            for cur in ("EUR", "USD")
        ],
    }
    scenario = scenarios(ops_data)[0]
    with psycopg.connect(ops_data.reader_url, autocommit=True) as conn:
        for (name, title), want in expected.items():
            dashboard = _load(DASHBOARD_DIR / name)
            expander = Expander(dashboard, scenario, variable_options(conn, dashboard))
            got = run_panel(conn, title, "table", expander.expand(_panel_sql(name, title)))
            assert len(got) == len(want), f"{name} {title!r}: {got} != {want}"
            for got_row, want_row in zip(got, want, strict=True):
                for g, w in zip(got_row, want_row, strict=True):
                    if isinstance(w, str):
                        assert g == w, f"{name} {title!r}"
                    else:
                        assert float(g) == pytest.approx(w), f"{name} {title!r}: {got} != {want}"


def test_a_panel_with_a_typo_fails_the_check(ops_data: OpsData) -> None:
    dashboard = _load(DASHBOARD_DIR / "business-overview.json")
    raw = _panel_sql("business-overview.json", "Revenue by plan and currency")
    typos = [
        raw.replace("sum(sum)", "sum(summ)"),  # a column
        raw.replace("'subscription_payment'", "'subscription_payments'"),  # an event name
        raw.replace("labels->>'plan'", "labels->>'plans'"),  # a label key
    ]
    scenario = scenarios(ops_data)[0]
    with psycopg.connect(ops_data.reader_url, autocommit=True) as conn:
        expander = Expander(dashboard, scenario, variable_options(conn, dashboard))
        run_panel(conn, "as written", "time_series", expander.expand(raw))
        for broken in typos:
            with pytest.raises(AssertionError):
                run_panel(conn, "typo", "time_series", expander.expand(broken))


def test_the_grafana_role_reads_dashboards_only_and_cannot_write(ops_data: OpsData) -> None:
    with psycopg.connect(ops_data.reader_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM metrics_rollup").fetchone() != (0,)
        for table in ("api_keys", "receivers", "metric_rollups"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table} LIMIT 1")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE scratch (x int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("BEGIN READ WRITE; DELETE FROM alerts; COMMIT")
