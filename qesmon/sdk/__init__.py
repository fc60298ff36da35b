"""Python SDK for the QES platform: push events into the metrics stream without ever blocking.

- :class:`MetricsCollector` (``collector.py``): ``record_metric``, ``record_business_event``,
  ``record_performance_metric``; buffered, batched, retried, exactly once.
  :class:`SyncMetricsCollector` (``sync.py``) is the same for code without an event loop.
- :func:`metrics_middleware` (``middleware.py``): times every aiohttp request.
- :func:`timed` (``timing.py``): times any other block or function.

Channel configuration from the platform's code (``AlertingSystem``, ``NotificationChannel``)
is the notifier's client, :mod:`notifier.client`: this package needs only the core
(``tests/sdk/test_import.py`` imports it in a clean interpreter). Importing it connects to
nothing and starts nothing.
"""

from __future__ import annotations

from qesmon.contract import MetricType
from qesmon.errors import ContractError
from qesmon.sdk.collector import CollectorStats, EventSink, MetricsCollector
from qesmon.sdk.middleware import metrics_middleware
from qesmon.sdk.sync import SyncMetricsCollector
from qesmon.sdk.timing import timed

__all__ = [
    "CollectorStats",
    "ContractError",
    "EventSink",
    "MetricType",
    "MetricsCollector",
    "SyncMetricsCollector",
    "metrics_middleware",
    "timed",
]
