"""A throw-away database for one benchmark run: created, migrated, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

from qesmon.migrate import apply_migrations


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """Create a database on ``server_url``'s server, migrate it, yield its URL; drop it after."""
    name = f"qesmon_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
