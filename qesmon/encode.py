"""Encoders of the event contract: event objects and parsed events as stream fields. Pure.

The inverse of :mod:`qesmon.contract`, used by the SDK, the API and the pipeline's dead
letters::

    redis.xadd("qes:metrics", encode_event(event_dict("signup", 1, tenant="acme")))
    redis.xadd("qes:metrics", encode_batch([event_dict("x", 1), event_dict("y", 2)]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from qesmon.contract import Event


def event_dict(
    name: str,
    value: float,
    *,
    type: str = "custom",
    ts: float | None = None,
    tenant: str | None = None,
    user: str | None = None,
    labels: Mapping[str, str] | None = None,
    success: bool = True,
) -> dict[str, Any]:
    """An event as the JSON object of an ``events`` batch, leaving out defaults."""
    obj: dict[str, Any] = {"name": name, "value": value}
    if type != "custom":
        obj["type"] = type
    if ts is not None:
        obj["ts"] = ts
    if tenant:
        obj["tenant"] = tenant
    if user:
        obj["user"] = user
    if labels:
        obj["labels"] = dict(labels)
    if not success:
        obj["success"] = False
    return obj


def encode_event(event: Mapping[str, Any]) -> dict[str, str]:
    """Flat string fields for ``XADD`` of one event object (see :func:`event_dict`)."""
    out: dict[str, str] = {}
    for key, value in event.items():
        if key == "labels":
            out[key] = orjson.dumps(value).decode()
        elif key == "success":
            out[key] = "true" if value else "false"
        else:
            out[key] = repr(value) if isinstance(value, float) else str(value)
    return out


def event_fields(event: Event) -> dict[str, str]:
    """Flat string fields of a parsed event (what a dead letter of a late event keeps)."""
    return encode_event(
        event_dict(
            event.name,
            event.value,
            type=event.type,
            ts=event.ts,
            tenant=event.tenant,
            user=event.user,
            labels=dict(event.labels),
            success=event.success,
        )
    )


def encode_batch(events: Iterable[Mapping[str, Any]]) -> dict[str, bytes]:
    """One ``events`` entry holding many event objects (at most MAX_BATCH)."""
    return {"events": orjson.dumps(list(events))}
