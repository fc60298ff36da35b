"""Event objects built on the caller's side: the pipeline's rules, errors naming the field."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from qesmon.contract import parse_entry
from qesmon.errors import ContractError
from qesmon.sdk import MetricType
from qesmon.sdk.events import (
    business_event,
    http_request_event,
    labels_from,
    metric_event,
    performance_event,
)


def field_of(call: object) -> str | None:
    with pytest.raises(ContractError) as info:
        call()  # type: ignore[operator]
    return info.value.field


def test_a_full_metric_event_is_the_contract_object() -> None:
    tenant = uuid.uuid4()
    event = metric_event(
        MetricType.REVENUE,
        "subscription_payment",
        49,
        {"plan": "pro", "currency": "EUR"},
        tenant_id=tenant,
        user_id=42,
        timestamp=1_700_000_000.5,
        success=False,
    )
    assert event == {
        "name": "subscription_payment",
        "value": 49.0,
        "type": "revenue",
        "ts": 1_700_000_000.5,
        "tenant": str(tenant),
        "user": "42",
        "labels": {"plan": "pro", "currency": "EUR"},
        "success": False,
    }


def test_the_event_time_defaults_to_the_moment_of_the_call() -> None:
    before = time.time()
    event = business_event("user_signup", "t-1", user_id="u-1")
    assert before <= event["ts"] <= time.time()
    assert event["type"] == "business_event" and event["value"] == 1.0


def test_aware_datetimes_are_taken_and_naive_ones_refused() -> None:
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert metric_event("usage", "x", 1, timestamp=moment)["ts"] == moment.timestamp()
    assert field_of(lambda: metric_event("usage", "x", 1, timestamp=datetime(2024, 5, 1))) == "ts"


def test_metadata_values_become_strings_and_none_is_left_out() -> None:
    assert labels_from({"a": 1, "b": 2.5, "c": True, "d": None, "e": "s"}) == {
        "a": "1",
        "b": "2.5",
        "c": "true",
        "e": "s",
    }
    event = performance_event("db_query", 0.5, True, {"rows": 10, "operation": "select"})
    assert event["labels"] == {"rows": "10", "operation": "select"}
    assert event["name"] == "db_query" and event["type"] == "performance"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: metric_event("custom", "bad name", 1.0), "name"),
        (lambda: metric_event("custom", "", 1.0), "name"),
        (lambda: metric_event("custom", "x" * 201, 1.0), "name"),
        (lambda: metric_event("custom", "x", math.nan), "value"),
        (lambda: metric_event("custom", "x", math.inf), "value"),
        (lambda: metric_event("custom", "x", "12"), "value"),  # type: ignore[arg-type]
        (lambda: metric_event("custom", "x", True), "value"),
        (lambda: metric_event("nonsense", "x", 1.0), "type"),
        (lambda: metric_event("custom", "x", 1.0, {"bad key": "v"}), "labels"),
        (lambda: metric_event("custom", "x", 1.0, {"k": 1}), "labels"),  # type: ignore[dict-item]
        (lambda: metric_event("custom", "x", 1.0, {1: "v"}), "labels"),  # type: ignore[dict-item]
        (lambda: metric_event("custom", "x", 1.0, {f"k{i}": "v" for i in range(33)}), "labels"),
        (lambda: metric_event("custom", "x", 1.0, ["a"]), "labels"),  # type: ignore[arg-type]
        (lambda: metric_event("custom", "x", 1.0, tenant_id="t" * 201), "tenant"),
        (lambda: metric_event("custom", "x", 1.0, user_id="a\nb"), "user"),
        (lambda: metric_event("custom", "x", 1.0, user_id=1.5), "user"),  # type: ignore[arg-type]
        (lambda: metric_event("custom", "x", 1.0, timestamp=1_000.0), "ts"),
        (lambda: metric_event("custom", "x", 1.0, timestamp=time.time() + 3600), "ts"),
        (lambda: business_event("user signup", "t"), "name"),
        (lambda: performance_event("op", math.nan), "value"),
        (lambda: performance_event("op", 1.0, True, {"k": "v" * 1001}), "labels"),
    ],
)
def test_bad_input_raises_contract_error_naming_the_field(call: object, field: str) -> None:
    assert field_of(call) == field


def test_the_message_says_what_is_wrong() -> None:
    with pytest.raises(ContractError, match=r"value: nan is not finite"):
        metric_event("custom", "x", math.nan)
    with pytest.raises(ContractError, match=r"ts: .* no time zone"):
        metric_event("custom", "x", 1, timestamp=datetime.now() - timedelta(seconds=1))


def test_what_the_sdk_accepts_the_parser_accepts_as_the_same_event() -> None:
    import orjson

    event = http_request_event(
        0.25, endpoint="/docs/{id}", method="GET", status=503, service="api", tenant_id="t-9"
    )
    assert event["success"] is False
    events, rejections = parse_entry(
        f"{int(time.time() * 1000)}-0", {"events": orjson.dumps([event]).decode()}
    )
    assert rejections == []
    assert events[0].labels == (
        ("endpoint", "/docs/{id}"),
        ("method", "GET"),
        ("service", "api"),
        ("status", "503"),
    )
