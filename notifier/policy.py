"""Reading the notifier's YAML (routing and escalation policies) from ``RULES_DIR``.

Every ``*.yaml``/``*.yml`` file in ``RULES_DIR`` (not recursive) whose top level has the key
``routing`` and/or ``escalation_policies`` is read; other files are rule files and skipped
(and the rule loader skips ours). Conventionally both keys live in
``RULES_DIR/notifications.yaml``; ``routing`` may be defined in one file only. The files are
re-read when one of them changes (:meth:`PolicyStore.maybe_reload`), so edits take effect
without a restart; a broken edit is logged and the last good configuration is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from notifier.escalation import EscalationPolicy, parse_policies
from notifier.routing import RoutingConfig, parse_routing
from qesmon.errors import RuleError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NotifierPolicy:
    """Routing plus the named escalation policies."""

    routing: RoutingConfig = field(default_factory=RoutingConfig)
    escalation: dict[str, EscalationPolicy] = field(default_factory=dict)
    files: tuple[str, ...] = ()


def load_policy(directory: Path, known_channels: frozenset[str]) -> NotifierPolicy:
    """Parse every notifier file in ``directory``; raise RuleError naming file and key."""
    routing: RoutingConfig | None = None
    routing_file = ""
    policies: dict[str, EscalationPolicy] = {}
    files: list[str] = []
    if not directory.is_dir():
        return NotifierPolicy()
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            if _mentions_notifier_keys(path):
                raise RuleError(f"invalid YAML: {exc}", where) from None
            continue
        if not isinstance(doc, dict) or not ({"routing", "escalation_policies"} & set(doc)):
            continue
        files.append(str(path))
        if "routing" in doc:
            if routing is not None:
                raise RuleError(f"routing is already defined in {routing_file}", str(path))
            routing = parse_routing(doc["routing"], str(path), known_channels)
            routing_file = str(path)
        if "escalation_policies" in doc:
            for name, policy in parse_policies(
                doc["escalation_policies"], str(path), known_channels
            ).items():
                if name in policies:
                    raise RuleError(f"escalation policy {name!r} is defined twice", str(path))
                policies[name] = policy
    result = NotifierPolicy(routing or RoutingConfig(), policies, tuple(files))
    names = {r.escalation for r in result.routing.routes} | {result.routing.escalation}
    missing = sorted(n for n in names if n and n not in policies)
    if missing:
        raise RuleError(
            f"routing names escalation policy {missing[0]!r}, which is not defined", routing_file
        )
    return result


def _mentions_notifier_keys(path: Path) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    return "escalation_policies:" in text or "routing:" in text


class PolicyStore:
    """The current :class:`NotifierPolicy`, reloaded when a file in the folder changes."""

    def __init__(self, directory: Path, known_channels: frozenset[str]) -> None:
        self.directory = directory
        self.known_channels = known_channels
        self._stamp: tuple[tuple[str, float], ...] = ()
        self.current = NotifierPolicy()
        self.errors = 0

    def _snapshot(self) -> tuple[tuple[str, float], ...]:
        if not self.directory.is_dir():
            return ()
        paths = [*self.directory.glob("*.yaml"), *self.directory.glob("*.yml")]
        return tuple(sorted((str(p), p.stat().st_mtime) for p in paths if p.is_file()))

    def maybe_reload(self) -> bool:
        """Re-read the files if any changed; True when a new policy is in force."""
        try:
            stamp = self._snapshot()
        except OSError:
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.current = load_policy(self.directory, self.known_channels)
        except (RuleError, OSError) as exc:
            self.errors += 1
            log.error("notifier policy not reloaded, keeping the previous one: %s", exc)
            return False
        log.info("notifier policy loaded from %s", ", ".join(self.current.files) or "(defaults)")
        return True
