"""Who hears about an alert: routing, throttling, escalation, templates and channels.

Data path: ``qes:alerts`` stream (:class:`qesmon.alerts.AlertTransition`) -> :mod:`.service`
(consumer group, dedupe on the transition key) -> :mod:`.store` (one transaction: loads the
alert and its episode, asks :mod:`.decide` for a plan -- outbox rows, escalation/repeat
timers, the episode update -- and writes it) -> :mod:`.delivery` (per-channel workers that
lease the rows through :mod:`.outbox`, grouping, retry with backoff) -> :mod:`.channels`
(the wire formats) -> ``deliveries`` (written by :mod:`.outbox`).

Pure logic lives in :mod:`.decide` (every notification decision), :mod:`.routing`,
:mod:`.escalation`, :mod:`.policy` and :mod:`.templating`;
:mod:`.actions` is what the API calls (acknowledge, resolve, configure, test);
:mod:`.client` is the same for the platform's Python code (``AlertingSystem``).
"""
