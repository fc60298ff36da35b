"""Migrations on the real TimescaleDB: in order, once, atomically, with clear failures."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from qesmon.errors import MigrationError
from qesmon.migrate import MIGRATIONS_DIR, apply_migrations, discover, split_statements
from qesmon.settings import Settings
from tests.conftest import _with_database


@pytest.fixture
def empty_db(base_settings: Settings) -> Iterator[str]:
    import os

    server = os.environ["DATABASE_URL"]
    name = f"qesmon_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_database(server, name)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def test_timescaledb_extension_is_installed(db: psycopg.Connection) -> None:
    row = db.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert row is not None and row[0].count(".") == 2
    hypertables = {
        r[0] for r in db.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    tiers = {"metric_rollups_10s", "metric_rollups_1m", "metric_rollups_1h", "metric_rollups_1d"}
    assert tiers <= hypertables


def test_applying_twice_changes_nothing(empty_db: str) -> None:
    first = apply_migrations(empty_db)
    assert first == [m.version for m in discover()]
    before = tables(empty_db)
    assert {
        "series",
        "metric_rollups",
        "alerts",
        "alert_events",
        "deliveries",
        "api_keys",
        "schema_migrations",
    } <= before
    assert apply_migrations(empty_db) == []
    assert tables(empty_db) == before


def test_a_failing_file_is_rolled_back_and_named_with_its_statement(
    empty_db: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE good (id int);\n")
    (tmp_path / "0002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "SELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError) as info:
        apply_migrations(empty_db, tmp_path)
    assert info.value.file == "0002_broken.sql"
    assert "no_such_function" in str(info.value) and "0002_broken.sql" in str(info.value)
    assert info.value.statement == "SELECT no_such_function();"
    assert "good" in tables(empty_db) and "half_done" not in tables(empty_db)
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == ["0001_ok"]


def test_an_applied_file_that_changed_is_refused(empty_db: str, tmp_path: Path) -> None:
    path = tmp_path / "0001_a.sql"
    path.write_text("CREATE TABLE a (id int);\n")
    apply_migrations(empty_db, tmp_path)
    path.write_text("CREATE TABLE a (id bigint);\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(empty_db, tmp_path)


def test_badly_named_or_duplicate_numbered_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_short.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"0001_some_name\.sql"):
        discover(tmp_path)
    (tmp_path / "1_short.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share the number 0001"):
        discover(tmp_path)


def test_statements_split_outside_dollar_quotes() -> None:
    sql = "-- comment\nCREATE TABLE t (x int);\nDO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;\nSELECT 2;\n"
    assert split_statements(sql) == [
        "CREATE TABLE t (x int);",
        "DO $$\nBEGIN\n  PERFORM 1;\nEND\n$$;",
        "SELECT 2;",
    ]


def test_every_shipped_migration_splits_into_statements() -> None:
    for migration in discover(MIGRATIONS_DIR):
        assert split_statements(migration.sql), migration.path


def test_cli_migrate_reports_what_it_applied(empty_db: str) -> None:
    import os

    env = {**os.environ, "DATABASE_URL": empty_db}
    run = [sys.executable, "-m", "cli", "migrate"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout and "0001_core" in first.stdout
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert second.stdout.strip() == "applied 0 migration(s)"
