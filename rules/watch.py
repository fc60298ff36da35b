"""Hot reload of rule files: notice edits by polling file stats, without a restart.

A file that breaks keeps the last good version of its rules active (its problem is listed
in :attr:`RuleWatcher.errors` until fixed); a file that never loaded cleanly contributes its
valid rules; a deleted file takes its rules with it. Polling costs one ``stat`` per file and
only changed files are parsed again, so calling :meth:`RuleWatcher.poll` from a dataflow step
is cheap; it rate-limits itself to ``poll_interval``::

    watcher = RuleWatcher(Path("rules"))
    evaluator = Evaluator(watcher.rules)
    ...
    if (new := watcher.poll()) is not None:
        evaluator.set_rules(new)
    health["rule_errors"] = [str(e) for e in watcher.errors]
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from qesmon.errors import RuleError
from rules.loader import FileRules, assemble, discover, parse_file
from rules.model import RuleSet

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int]  # mtime_ns, size, inode


class RuleWatcher:
    """Keeps the rule set of a directory current; see the module docstring.

    The first :meth:`poll` returns the initial set (also available as :attr:`rules`), later
    calls return a new :class:`RuleSet` only when a file changed.
    """

    def __init__(self, rules_dir: Path, poll_interval: float = 1.0) -> None:
        self.rules_dir = rules_dir
        self.poll_interval = poll_interval
        self.errors: list[RuleError] = []
        self.rules = RuleSet()
        self._stamps: dict[Path, _Stamp] = {}
        self._current: dict[Path, FileRules] = {}  # newest parse of each file
        self._good: dict[Path, FileRules] = {}  # last error-free parse of each file
        self._dir_errors: list[RuleError] = []
        self._next_poll = 0.0
        self._delivered = False
        self._rescan()

    def poll(self) -> RuleSet | None:
        """A new RuleSet when a rule file changed since the last call, else None."""
        now = time.monotonic()
        if now < self._next_poll and self._delivered:
            return None
        self._next_poll = now + self.poll_interval
        changed = self._rescan()
        if changed or not self._delivered:
            self._delivered = True
            return self.rules
        return None

    def _rescan(self) -> bool:
        files, dir_errors = discover([self.rules_dir])
        stamps: dict[Path, _Stamp] = {}
        for path in files:
            try:
                st = os.stat(path)
            except OSError:
                continue  # deleted between listing and stat: gone
            stamps[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamps == self._stamps and [str(e) for e in dir_errors] == [
            str(e) for e in self._dir_errors
        ]:
            return False
        for path, stamp in stamps.items():
            if self._stamps.get(path) != stamp:
                result = parse_file(path)
                self._current[path] = result
                if result.ok:
                    self._good[path] = result
                else:
                    log.warning(
                        "rule file %s has %d problem(s); %s",
                        path,
                        len(result.errors),
                        "keeping its last good version"
                        if path in self._good
                        else "loading its valid rules",
                    )
        for path in set(self._current) - set(stamps):
            del self._current[path]
            self._good.pop(path, None)
        self._stamps = stamps
        self._dir_errors = dir_errors
        active = []
        errors = list(dir_errors)
        for path in sorted(stamps):
            current = self._current[path]
            errors += current.errors
            chosen = current if current.ok else self._good.get(path, current)
            active.append((path, chosen.rules))
        rules, dup_errors = assemble(active)
        self.rules = rules
        self.errors = errors + dup_errors
        log.info(
            "rules loaded: %d rules from %d files, %d problem(s)",
            len(rules),
            len(stamps),
            len(self.errors),
        )
        return True
