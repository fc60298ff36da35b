"""Timestamps in API answers: RFC 3339 in UTC with a ``Z``, to the second."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float | datetime | None) -> str | None:
    if ts is None:
        return None
    moment = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)
