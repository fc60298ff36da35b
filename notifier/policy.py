"""Reading the notifier's YAML (routing and escalation policies) from ``RULES_DIR``.

Every ``*.yaml``/``*.yml`` file in ``RULES_DIR`` (not recursive) whose top level has the key
``routing`` and/or ``escalation_policies`` is read; other files are rule files and skipped
(and the rule loader skips ours). Conventionally both keys live in
``RULES_DIR/notifications.yaml``; ``routing`` may be defined in one file only. The files are
re-read when one of them changes (:meth:`PolicyStore.maybe_reload`), so edits take effect
without a restart; a broken edit is logged and the last good configuration is kept.

Problems name ``file:line`` and the key path, as the rule loader's do (the files are read
with :mod:`qesmon.yamlread`)::

    notifications.yaml:8: routing.routes[0].channels: unknown channel 'telegram' (known: ...)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from notifier.escalation import EscalationPolicy, parse_policies
from notifier.routing import RoutingConfig, parse_routing
from qesmon.errors import RuleError
from qesmon.yamlread import compose_one, construct, find_key, line_at, line_of, node_at

log = logging.getLogger(__name__)

#: the top-level keys that make a YAML file in ``RULES_DIR`` the notifier's (the rule loader
#: skips files with them: rules.loader.NOTIFIER_KEYS)
NOTIFIER_KEYS = frozenset(("routing", "escalation_policies"))
# the name a routing or escalation problem is about, to point at its line rather than at the
# list or mapping holding it
_NAMED = re.compile(
    r"unknown (?:match )?key (?:'([^']*)'|routing\.(\S+))|unknown channel '([^']*)'"
)


@dataclass(frozen=True, slots=True)
class NotifierPolicy:
    """Routing plus the named escalation policies."""

    routing: RoutingConfig = field(default_factory=RoutingConfig)
    escalation: dict[str, EscalationPolicy] = field(default_factory=dict)
    files: tuple[str, ...] = ()


def load_policy(directory: Path, known_channels: frozenset[str]) -> NotifierPolicy:
    """Parse every notifier file in ``directory``; raise RuleError naming ``file:line`` and
    the key path (``notifications.yaml:7: routing.routes[0].channels: unknown channel ...``)."""
    routing: RoutingConfig | None = None
    routing_at: tuple[Path, yaml.Node] | None = None
    policies: dict[str, EscalationPolicy] = {}
    defined_at: dict[str, str] = {}
    files: list[str] = []
    if not directory.is_dir():
        return NotifierPolicy()
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if _mentions_notifier_keys(data.decode("utf-8", "replace")):
                line = data.count(b"\n", 0, exc.start) + 1
                raise RuleError("not valid UTF-8", f"{path}:{line}") from None
            continue  # a rule file: the rule loader reports it
        try:
            root = compose_one(text, path)
            doc = None if root is None else construct(root, path)
        except RuleError:
            if _mentions_notifier_keys(text):
                raise
            continue  # a rule file (the rule loader reports its YAML errors)
        if not isinstance(doc, dict) or not (NOTIFIER_KEYS & set(doc)):
            continue
        assert root is not None
        files.append(str(path))
        if "routing" in doc:
            if routing_at is not None:
                first = f"{routing_at[0]}:{line_at(routing_at[1], 'routing')}"
                raise RuleError(
                    f"routing is already defined in {first}", f"{path}:{line_at(root, 'routing')}"
                )
            with _lines(path, root, "routing"):
                routing = parse_routing(doc["routing"], str(path), known_channels)
            routing_at = (path, root)
        if "escalation_policies" in doc:
            with _lines(path, root, "escalation_policies"):
                parsed = parse_policies(doc["escalation_policies"], str(path), known_channels)
            for name, policy in parsed.items():
                here = f"{path}:{line_at(root, f'escalation_policies.{name}')}"
                if name in policies:
                    first = defined_at[name]
                    raise RuleError(
                        f"escalation policy {name!r} is defined twice (first in {first})", here
                    )
                policies[name] = policy
                defined_at[name] = here
    result = NotifierPolicy(routing or RoutingConfig(), policies, tuple(files))
    names = {r.escalation for r in result.routing.routes} | {result.routing.escalation}
    missing = sorted(n for n in names if n and n not in policies)
    if missing:
        assert routing_at is not None  # only routing names policies
        raise RuleError(
            f"routing names escalation policy {missing[0]!r}, which is not defined",
            _reference(routing_at[0], routing_at[1], missing[0]),
        )
    return result


@contextmanager
def _lines(path: Path, root: yaml.Node, section: str) -> Iterator[None]:
    """Moves a RuleError of the routing or escalation parser, which names a key path in
    ``section`` of ``path`` (``file: routing.routes[0]``), to that key's ``file:line``."""
    try:
        yield
    except RuleError as exc:
        prefix = f"{path}: "
        location = exc.location or ""
        keypath = location[len(prefix) :] if location.startswith(prefix) else ""
        line = line_at(root, keypath or section)
        line = _named_line(node_at(root, keypath or section), exc.problem) or line
        problem = f"{keypath}: {exc.problem}" if keypath else exc.problem
        raise RuleError(problem, f"{path}:{line}") from None


def _named_line(node: yaml.Node, problem: str) -> int | None:
    """The line of the key or list item the problem names (an unknown key or channel)."""
    match = _NAMED.search(problem)
    if match is None:
        return None
    name = next(g for g in match.groups() if g is not None)
    if isinstance(node, yaml.MappingNode):
        key = find_key(node, name)
        return None if key is None else line_of(key)
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if isinstance(item, yaml.ScalarNode) and item.value == name:
                return line_of(item)
    return None


def _reference(path: Path, root: yaml.Node, policy: str) -> str:
    """``file:line`` of the first ``escalation:`` in the routing that names ``policy``."""
    routes = node_at(root, "routing.routes")
    count = len(routes.value) if isinstance(routes, yaml.SequenceNode) else 0
    for keypath in ["routing.defaults", *(f"routing.routes[{i}]" for i in range(count))]:
        node = node_at(root, keypath)
        value = find_key(node, "escalation")
        if value is not None and node_at(node, "escalation").value == policy:
            return f"{path}:{line_of(value)}"
    return f"{path}:{line_at(root, 'routing')}"


def _mentions_notifier_keys(text: str) -> bool:
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
