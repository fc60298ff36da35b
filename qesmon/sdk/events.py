"""Building and validating event objects on the caller's side, before they are buffered.

Each builder returns the JSON object of one event (the element format of an ``events``
entry, see :func:`qesmon.encode.event_dict`) after running it through the very
validation the pipeline applies to stream entries, so a bad call fails at once with a
:class:`~qesmon.errors.ContractError` naming the field instead of reaching the dead-letter
stream minutes later::

    event = performance_event("db_query", 0.012, labels={"operation": "select"})

The event time defaults to *now* (the time of the call, not the time the event reaches
Redis), so events buffered during an outage still land in the right windows.
"""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import orjson

from qesmon.contract import MetricType, validate_event
from qesmon.encode import event_dict
from qesmon.errors import ContractError
from qesmon.vocabulary import HTTP_REQUEST

__all__ = [
    "Id",
    "Timestamp",
    "business_event",
    "http_request_event",
    "labels_from",
    "metric_event",
    "performance_event",
    "records",
    "validate",
]

#: a tenant or user id as callers hold it
Id = str | int | uuid.UUID
#: Unix seconds or an aware datetime
Timestamp = float | int | datetime

P = ParamSpec("P")
S = TypeVar("S")
R = TypeVar("R")


def validate(event: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Check one event object with the pipeline's own rules; return it or raise ContractError.

    ``now`` stands for the entry's time (the ``ts`` bound); it defaults to the clock.
    """
    labels = event.get("labels")
    probe = event
    if labels:
        # The contract remembers label sets it has validated by their JSON text; handing it
        # the JSON makes repeated label sets (the normal case) cost a lookup, not a check.
        probe = event.copy()
        try:
            probe["labels"] = orjson.dumps(labels).decode()
        except TypeError as exc:
            raise ContractError(f"labels: not a mapping of str to str ({exc})", "labels") from None
    validate_event(probe, time.time() if now is None else now)
    return event


def labels_from(metadata: Mapping[str, object] | None) -> dict[str, str] | None:
    """Labels from free-form metadata: values become strings, ``None`` values are left out.

    Booleans become ``true``/``false`` (as in JSON) rather than Python's ``True``.
    """
    if not metadata:
        return None
    labels: dict[str, str] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if not isinstance(key, str):
            raise ContractError(
                f"labels: key {key!r} must be a string, got {type(key).__name__}", "labels"
            )
        if isinstance(value, str):
            labels[key] = value
        elif isinstance(value, bool):
            labels[key] = "true" if value else "false"
        else:
            labels[key] = str(value)
    return labels


def _id(field: str, raw: Id | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, uuid.UUID) or (isinstance(raw, int) and not isinstance(raw, bool)):
        return str(raw)
    raise ContractError(f"{field}: expected a string, int or UUID, got {type(raw).__name__}", field)


def _ts(raw: Timestamp | None) -> float:
    if raw is None:
        return time.time()
    if isinstance(raw, datetime):
        if raw.tzinfo is None:
            raise ContractError(
                f"ts: datetime {raw.isoformat()} has no time zone (use an aware datetime, "
                "e.g. datetime.now(timezone.utc))",
                "ts",
            )
        return raw.timestamp()
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ContractError(
            f"ts: expected Unix seconds or an aware datetime, got {type(raw).__name__}", "ts"
        )
    return float(raw)


def _value(raw: object) -> float:
    # The contract also takes numeric strings on the wire; the SDK wants real numbers.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ContractError(f"value: expected a number, got {type(raw).__name__}", "value")
    return float(raw)


def metric_event(
    metric_type: MetricType | str,
    name: str,
    value: float,
    labels: Mapping[str, str] | None = None,
    tenant_id: Id | None = None,
    user_id: Id | None = None,
    timestamp: Timestamp | None = None,
    success: bool = True,
) -> dict[str, Any]:
    """Any event; ``metric_type`` is a :class:`MetricType` or its string value."""
    mtype = metric_type.value if isinstance(metric_type, MetricType) else metric_type
    if not isinstance(mtype, str) or not mtype:
        raise ContractError(f"type: expected a MetricType, got {metric_type!r}", "type")
    if labels is not None and not isinstance(labels, Mapping):
        raise ContractError(
            f"labels: expected a mapping of str to str, got {type(labels).__name__}", "labels"
        )
    event = event_dict(
        name,
        _value(value),
        type=mtype,
        ts=_ts(timestamp),
        tenant=_id("tenant", tenant_id),
        user=_id("user", user_id),
        labels=labels,
        success=bool(success),
    )
    return validate(event)


def business_event(
    event_type: str,
    tenant_id: Id | None,
    value: float = 1.0,
    metadata: Mapping[str, object] | None = None,
    user_id: Id | None = None,
) -> dict[str, Any]:
    """A ``business_event`` named ``event_type`` (``user_signup``, ``auth_failed``, ...)."""
    return metric_event(
        MetricType.BUSINESS_EVENT,
        event_type,
        value,
        labels_from(metadata),
        tenant_id=tenant_id,
        user_id=user_id,
    )


def performance_event(
    operation: str,
    duration: float,
    success: bool = True,
    metadata: Mapping[str, object] | None = None,
    tenant_id: Id | None = None,
) -> dict[str, Any]:
    """A ``performance`` event: ``name`` = operation, ``value`` = duration in seconds."""
    return metric_event(
        MetricType.PERFORMANCE,
        operation,
        duration,
        labels_from(metadata),
        tenant_id=tenant_id,
        success=success,
    )


def http_request_event(
    duration: float,
    *,
    endpoint: str,
    method: str,
    status: int,
    service: str,
    tenant_id: Id | None = None,
) -> dict[str, Any]:
    """The ``http_request`` event the middleware records; success means status < 500."""
    return performance_event(
        HTTP_REQUEST,
        duration,
        status < 500,
        {"endpoint": endpoint, "method": method, "status": str(status), "service": service},
        tenant_id,
    )


def records(
    build: Callable[P, dict[str, Any]],
) -> Callable[[Callable[[S, dict[str, Any]], R]], Callable[Concatenate[S, P], R]]:
    """Make ``method(self, event)`` a ``record_*`` method that takes ``build``'s parameters.

    Both collectors' ``record_*`` are "build and validate this event, then buffer it"; their
    parameters are written once, on the builder here, and mypy checks every call against it::

        @records(business_event)
        async def record_business_event(self, event: dict[str, Any]) -> None: ...

    A coroutine method stays a coroutine function (the event is built when it runs).
    """

    def decorate(method: Callable[[S, dict[str, Any]], R]) -> Callable[Concatenate[S, P], R]:
        if inspect.iscoroutinefunction(method):

            async def record_async(self: S, /, *args: P.args, **kwargs: P.kwargs) -> object:
                return await cast(Awaitable[object], method(self, build(*args, **kwargs)))

            record = cast(Callable[Concatenate[S, P], R], record_async)
        else:

            def record(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
                return method(self, build(*args, **kwargs))

        functools.update_wrapper(record, method)
        params = inspect.signature(build).parameters.values()
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        # what help() and inspect show: build's parameters, not (self, event)
        record.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [self_param, *params], return_annotation=inspect.signature(method).return_annotation
        )
        return record

    return decorate
