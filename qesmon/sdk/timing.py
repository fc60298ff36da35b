"""``timed``: record how long any block or function takes, as a performance event.

Slow database queries and calls to external providers then show up like slow requests::

    async with timed(metrics, "db_query", operation="select_documents"):
        rows = await conn.execute(...)

    with timed(metrics, "external_api", provider="tsa", operation="timestamp"):
        token = tsa.request(digest)

    @timed(metrics, "db_query", operation="load_tenant")
    async def load_tenant(tenant_id: str) -> Tenant: ...

A block that raises is recorded with ``success=False`` and the exception propagates.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from qesmon.sdk.collector import EventSink
from qesmon.sdk.events import labels_from, performance_event

__all__ = ["Timer", "timed"]

P = ParamSpec("P")
R = TypeVar("R")


class Timer:
    """Context manager (sync and async) and decorator made by :func:`timed`.

    The operation name and labels are checked when the timer is made, so a typo fails at
    start-up, not at the first measurement.
    """

    def __init__(self, sink: EventSink, operation: str, labels: dict[str, str] | None) -> None:
        performance_event(operation, 0.0, True, labels)  # raises ContractError if invalid
        self._sink = sink
        self._operation = operation
        self._labels = labels
        # a stack, so that nested use of one Timer (e.g. recursion) pairs up correctly
        self._starts: list[float] = []

    def record(self, duration: float, success: bool) -> None:
        """Record one measurement (what the context manager and decorator do on exit)."""
        self._sink.submit(performance_event(self._operation, duration, success, self._labels))

    def __enter__(self) -> Timer:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record(time.perf_counter() - self._starts.pop(), exc_type is None)

    async def __aenter__(self) -> Timer:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function (sync or async): every call is timed on its own."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def timed_coroutine(*args: P.args, **kwargs: P.kwargs) -> Any:
                start = time.perf_counter()
                try:
                    result = await func(*args, **kwargs)
                except BaseException:
                    self.record(time.perf_counter() - start, False)
                    raise
                self.record(time.perf_counter() - start, True)
                return result

            return timed_coroutine

        @functools.wraps(func)
        def timed_function(*args: P.args, **kwargs: P.kwargs) -> Any:
            start = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException:
                self.record(time.perf_counter() - start, False)
                raise
            self.record(time.perf_counter() - start, True)
            return result

        return timed_function


def timed(collector: EventSink, operation: str, /, **labels: object) -> Timer:
    """Time a block or function as a ``performance`` event named ``operation``.

    ``labels`` become the event's labels (values turned into strings); keep them bounded
    (an operation kind, a provider), never ids. ``collector`` and ``operation`` are
    positional-only, so ``operation=...`` is a label, as the vocabulary's ``db_query`` has.
    """
    return Timer(collector, operation, labels_from(labels))
