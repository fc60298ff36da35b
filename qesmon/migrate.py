"""Schema migrations: numbered plain-SQL files in ``migrations/``, applied in order, then the
processes' privileges, ``migrations/grants.sql``.

Each numbered file runs in its own transaction and is recorded in ``schema_migrations`` with
its SHA-256; applying twice is a no-op; a failed file is rolled back entirely and reported with
its name and the failing statement. An advisory lock keeps two processes from migrating at
once. Files are split into statements on ``;`` at line ends so the failing one can be named;
a statement containing a dollar-quoted body (``DO $$ ... $$``) is kept whole.

``grants.sql`` is not recorded: it runs after the numbered files every time, in one
transaction, and says the whole of what the roles of :data:`PROCESS_ROLES` may do (it revokes
everything first). It runs when those roles exist (``scripts/pg-roles.sql`` makes them); with
none of them, every process uses ``DATABASE_URL``'s role and it is skipped; with only some,
migrating fails, since the grants name all three.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from qesmon.db import connect
from qesmon.errors import MigrationError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_FILE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
_LOCK_ID = 7_420_191_001
#: what each process may do, applied after the numbered migrations (not a migration itself)
GRANTS_FILE = "grants.sql"
#: the database roles of the pipeline, the notifier and the API that grants.sql names
PROCESS_ROLES = ("qesmon_pipeline", "qesmon_notifier", "qesmon_api")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migration files in lexical order; refuse names that do not follow NNNN_name.sql
    (but for :data:`GRANTS_FILE`)."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        if path.name == GRANTS_FILE:
            continue
        if not _FILE.fullmatch(path.name):
            raise MigrationError("file name must look like 0001_some_name.sql", str(path))
        found.append(Migration(path.stem, path, path.read_text(encoding="utf-8")))
    versions = [m.version[:4] for m in found]
    duplicates = {v for v in versions if versions.count(v) > 1}
    if duplicates:
        raise MigrationError(f"two files share the number {sorted(duplicates)[0]}", str(directory))
    return found


def split_statements(sql: str) -> list[str]:
    """Split a file into statements at ``;`` ending a line, outside dollar quotes."""
    statements: list[str] = []
    current: list[str] = []
    in_dollar = False
    for line in sql.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        current.append(line)
        if line.count("$$") % 2 == 1:
            in_dollar = not in_dollar
        if not in_dollar and stripped.endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    tail = "\n".join(current).strip()
    if tail and not all(ln.strip().startswith("--") for ln in current if ln.strip()):
        statements.append(tail)
    return statements


def apply_migrations(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration, then the directory's grants file (when it has one and
    the process roles exist); return the versions applied (empty when up to date)."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done: dict[str, str] = {
                str(v): str(c)
                for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            "file changed after it was applied; add a new migration instead",
                            migration.path.name,
                        )
                    continue
                _apply_one(conn, migration)
                applied_now.append(migration.version)
                log.info("applied migration %s", migration.path.name)
            grants = directory / GRANTS_FILE
            if grants.is_file():
                _apply_grants(conn, grants)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now


def _apply_one(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    with conn.transaction():
        _run_file(conn, migration.path.name, migration.sql)
        conn.execute(
            "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
            (migration.version, migration.checksum),
        )


def _apply_grants(conn: psycopg.Connection[tuple[object, ...]], path: Path) -> None:
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(PROCESS_ROLES),)
    )
    present = {str(name) for (name,) in rows}
    if not present:
        log.info(
            "no process roles (%s): %s not applied, every process uses DATABASE_URL's role",
            ", ".join(PROCESS_ROLES),
            path.name,
        )
        return
    missing = [role for role in PROCESS_ROLES if role not in present]
    if missing:
        raise MigrationError(
            f"{path.name}: role {missing[0]} does not exist, but {sorted(present)[0]} does:"
            " create all three with scripts/pg-roles.sql",
            path.name,
        )
    with conn.transaction():
        _run_file(conn, path.name, path.read_text(encoding="utf-8"))
    log.info("applied %s: privileges of %s", path.name, ", ".join(PROCESS_ROLES))


def _run_file(conn: psycopg.Connection[tuple[object, ...]], name: str, text: str) -> None:
    """Run a file's statements (inside the caller's transaction), naming a failing one."""
    for statement in split_statements(text):
        try:
            conn.execute(statement.encode())
        except psycopg.Error as exc:
            first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise MigrationError(
                f"{name}: {first_line}\n  in statement: {_shorten(statement)}",
                name,
                statement,
            ) from exc


def _shorten(statement: str, limit: int = 300) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
