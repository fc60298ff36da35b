"""Who hears about an alert: routing, throttling, escalation, templates and channels.

Data path: ``qes:alerts`` stream (:class:`qesmon.alerts.AlertTransition`) -> :mod:`.service`
(consumer group, dedupe on the transition key) -> :mod:`.store` (one transaction: episode
state, outbox rows, escalation/repeat timers) -> :mod:`.delivery` (per-channel workers,
grouping, retry with backoff) -> :mod:`.channels` (the wire formats) -> ``deliveries``.

Pure logic lives in :mod:`.routing`, :mod:`.escalation`, :mod:`.policy` and :mod:`.templating`;
:mod:`.actions` is what the API calls (acknowledge, resolve, configure, test);
:mod:`.client` is the same for the platform's Python code (``AlertingSystem``).
"""
