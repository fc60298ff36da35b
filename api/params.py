"""Query-string and body validation: every bad parameter becomes a 400 that names it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qesmon.errors import BadRequest

MAX_TENANT = 200
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def integer(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer parameter in ``[low, high]``; ``default`` when absent."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: {raw[:40]!r} is not an integer", "invalid_parameter") from None
    if not low <= value <= high:
        raise BadRequest(
            f"{name}: must be between {low} and {high}, got {value}", "invalid_parameter"
        )
    return value


def boolean(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise BadRequest(f"{name}: {raw[:40]!r} is not true or false", "invalid_parameter")


def text(query: Mapping[str, str], name: str, *, max_len: int = MAX_TENANT) -> str | None:
    """An optional printable string of at most ``max_len`` characters."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len or not raw.isprintable():
        raise BadRequest(
            f"{name}: must be printable and at most {max_len} characters", "invalid_parameter"
        )
    return raw


def choice(
    query: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str | None = None
) -> str:
    raw = query.get(name) or default
    if raw is None:
        raise BadRequest(f"{name}: required, one of {', '.join(allowed)}", "invalid_parameter")
    if raw not in allowed:
        raise BadRequest(
            f"{name}: {raw[:40]!r} is not one of {', '.join(allowed)}", "invalid_parameter"
        )
    return raw


def only_known(query: Mapping[str, str], known: tuple[str, ...]) -> None:
    """Refuse unknown parameters, so a typo (``day=7``) is not silently ignored."""
    for name in query:
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise BadRequest(
                f"unknown parameter {name[:40]!r} (allowed: {allowed})", "invalid_parameter"
            )


def body_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(body).__name__}", "invalid_body")
    return body


def path_id(raw: str, name: str = "id") -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: {raw[:40]!r} is not an integer", "invalid_parameter") from None
    if not 1 <= value <= 2**63 - 1:
        raise BadRequest(f"{name}: must be a positive integer", "invalid_parameter")
    return value
