"""Escalation policies: who is told next when nobody acknowledges an alert.

Policies live in YAML files in ``RULES_DIR`` under the top-level key ``escalation_policies``
(the rule loader skips such files)::

    escalation_policies:
      critical-default:
        levels:
          - {after: 0s,  channels: [slack]}       # with the firing notice
          - {after: 5m,  channels: [sms]}         # 5 min after firing, if unacknowledged
          - {after: 15m, channels: [pagerduty]}

``after`` counts from the moment the alert fired (not from the previous level). Acknowledging
the alert cancels the levels not yet reached; resolving it sends a resolved notice to every
channel any level told. Delays are multiplied by ``NOTIFIER_TIME_SCALE`` when scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from notifier.routing import _channel_list, parse_duration
from qesmon.errors import RuleError


@dataclass(frozen=True, slots=True)
class Level:
    """One step: ``channels`` are told ``after`` seconds past firing."""

    after: float
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """Ordered levels; level 0 usually has ``after`` = 0 and goes out with the firing notice."""

    name: str
    levels: tuple[Level, ...]

    def immediate_channels(self) -> tuple[str, ...]:
        """Channels of the levels due at once (``after`` = 0)."""
        out: list[str] = []
        for level in self.levels:
            if level.after == 0:
                out.extend(c for c in level.channels if c not in out)
        return tuple(out)

    def delayed_levels(self, scale: float = 1.0) -> list[tuple[int, float, tuple[str, ...]]]:
        """``(level index, delay in seconds after firing, channels)`` for the timed levels."""
        return [
            (i, level.after * scale, level.channels)
            for i, level in enumerate(self.levels)
            if level.after > 0
        ]


def parse_policies(
    raw: Any, where: str, known_channels: frozenset[str]
) -> dict[str, EscalationPolicy]:
    """Validate the ``escalation_policies`` mapping of one file; errors name the key path."""
    if not isinstance(raw, dict):
        raise RuleError("escalation_policies must map policy names to {levels: [...]}", where)
    out: dict[str, EscalationPolicy] = {}
    for name, body in raw.items():
        at = f"{where}: escalation_policies.{name}"
        if not isinstance(body, dict) or set(body) != {"levels"}:
            raise RuleError("a policy must be a mapping with exactly the key `levels`", at)
        items = body["levels"]
        if not isinstance(items, list) or not items:
            raise RuleError("levels must be a non-empty list", f"{at}.levels")
        levels: list[Level] = []
        for i, item in enumerate(items):
            lat = f"{at}.levels[{i}]"
            if not isinstance(item, dict) or set(item) - {"after", "channels"}:
                raise RuleError("a level is a mapping with `after` and `channels`", lat)
            if "channels" not in item:
                raise RuleError("missing `channels`", lat)
            after = parse_duration(item.get("after", 0), f"{lat}.after")
            if levels and after < levels[-1].after:
                raise RuleError(
                    f"levels must be in order of `after` ({after}s comes after "
                    f"{levels[-1].after}s)",
                    f"{lat}.after",
                )
            levels.append(
                Level(after, _channel_list(item["channels"], f"{lat}.channels", known_channels))
            )
        out[str(name)] = EscalationPolicy(str(name), tuple(levels))
    return out
