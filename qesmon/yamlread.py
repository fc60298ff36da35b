"""Reading YAML files people write, so that every problem names its ``file:line``. Pure.

PyYAML's plain data forgets where each value came from; this module keeps the node tree
(``yaml.compose``) and reads values from it, so a checker can point at the line to fix.
Used by the rule loader (:mod:`rules.loader`) and the notifier's policy files
(:mod:`notifier.policy`)::

    documents = compose_all(text, path)          # RuleError "file:line: YAML error: ..."
    reader = NodeReader(path)
    fields = reader.mapping(documents[0], "a rule")
    name = reader.string(fields["name"][1], "name")
    reader.errors                                # [RuleError("file:3: name must be a string ...")]

Problems are :class:`~qesmon.errors.RuleError`, whose ``location`` is ``file:line``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from qesmon.errors import RuleError

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

#: one step of a key path: ``.key`` (or the first key, without the dot) or ``[index]``
_INDEX = re.compile(r"\[(\d+)\]")


def compose_all(text: str, path: Path | str) -> list[yaml.Node]:
    """The node trees of every document in ``text`` (``None`` for an empty one).

    Raises RuleError at the line of the YAML error, with a hint for the usual mistakes.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise yaml_error(exc, text, path) from None
    for node in nodes:
        _check_tags(node, path)
    return nodes


def compose_one(text: str, path: Path | str) -> yaml.Node | None:
    """The node tree of a file that holds a single document (``None`` when it is empty).

    Raises RuleError at the line of the YAML error (a second document is one).
    """
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        if exc.context == "expected a single document in the stream" and exc.problem_mark:
            raise RuleError(
                "YAML error: a second document (---), but this file holds only one",
                f"{path}:{exc.problem_mark.line + 1}",
            ) from None
        raise yaml_error(exc, text, path) from None
    except yaml.YAMLError as exc:
        raise yaml_error(exc, text, path) from None
    _check_tags(node, path)
    return node


def _check_tags(root: yaml.Node | None, path: Path | str) -> None:
    """Refuse tags the safe loader cannot build (``!foo``, ``!!python/object``) at their line,
    before anything constructs the document (which would raise without a location)."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias: already checked (and anchors may form cycles)
            continue
        seen.add(id(node))
        if node.tag not in yaml.SafeLoader.yaml_constructors:
            raise RuleError(f"YAML error: unknown tag {node.tag!r}", f"{path}:{line_of(node)}")
        if isinstance(node, yaml.MappingNode):
            stack += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def yaml_error(exc: yaml.YAMLError, text: str, path: Path | str) -> RuleError:
    """A PyYAML error as a RuleError at ``file:line`` (line 0 when PyYAML gives none)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return RuleError(f"YAML error: {exc}", f"{path}:0")
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 0
    problem = exc.problem or "invalid YAML"
    if exc.context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
        problem += f" ({exc.context} started at line {exc.context_mark.line + 1})"
    lines = text.splitlines()
    if "\t" in problem or (0 < line <= len(lines) and "\t" in lines[line - 1]):
        problem += " (tabs are not allowed for indentation in YAML)"
    return RuleError(f"YAML error: {problem}", f"{path}:{line}")


def construct(node: yaml.Node, path: Path | str) -> Any:
    """The plain data of a node tree, as ``yaml.safe_load`` gives it.

    Raises RuleError at ``file:line`` for what the safe loader refuses (unknown tags, ...).
    """
    try:
        return yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, "", path) from None


def line_of(node: yaml.Node) -> int:
    """The line (from 1) where ``node`` starts."""
    return int(node.start_mark.line) + 1


def describe(node: yaml.Node) -> str:
    """What a node holds, for messages: ``a mapping``, ``a list``, ``nothing``, ``int 5``."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = yaml.SafeLoader("").construct_document(node)
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def child(node: yaml.Node, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node (the first one given), else None."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == key:
                assert isinstance(value_node, yaml.Node)
                return value_node
    return None


def find_key(node: yaml.Node, key: str) -> yaml.Node | None:
    """The node of ``key`` itself in a mapping node (the last one given, as the data has it)."""
    found = None
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                found = k
    return found


def node_at(root: yaml.Node, keypath: str) -> yaml.Node:
    """The node a key path such as ``routing.routes[0].channels`` names in ``root``.

    As deep as the path leads: where a step does not exist (the problem may be just that),
    the last node found. A mapping's value is taken from the last occurrence of its key, as in
    the plain data; a key may hold dots (``escalation_policies.on.call``).
    """
    return _walk(root, keypath)[0]


def line_at(root: yaml.Node, keypath: str) -> int:
    """The line to show for a key path: its key's line (a block list or mapping under a key
    starts on the next line), or the list item's; see :func:`node_at`."""
    node, key = _walk(root, keypath)
    return line_of(key if key is not None else node)


def _walk(root: yaml.Node, keypath: str) -> tuple[yaml.Node, yaml.Node | None]:
    """(node found, the key node of the last step if that step was a key)."""
    node: yaml.Node = root
    key: yaml.Node | None = None
    rest = keypath
    while rest:
        if rest.startswith("["):
            match = _INDEX.match(rest)
            if match is None or not isinstance(node, yaml.SequenceNode):
                break
            index = int(match.group(1))
            if index >= len(node.value):
                break
            node, key, rest = node.value[index], None, rest[match.end() :]
            continue
        rest = rest.removeprefix(".")
        if not isinstance(node, yaml.MappingNode):
            break
        best: tuple[str, yaml.Node, yaml.Node] | None = None
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            if (
                isinstance(name, str)
                and rest.startswith(name)
                and rest[len(name) : len(name) + 1] in ("", ".", "[")
                and (best is None or len(name) >= len(best[0]))
            ):
                best = (name, k, v)
        if best is None:
            break
        node, key, rest = best[2], best[1], rest[len(best[0]) :]
    return node, key


class NodeReader:
    """Reads values out of YAML nodes, collecting every problem with its ``file:line``.

    Each reader method returns the value, or None after recording a RuleError in ``errors``,
    so a checker can go on and report every problem of a file at once. Subclass it to read a
    particular kind of file (the rule loader does).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.errors: list[RuleError] = []
        self._constructor = yaml.SafeLoader("")

    def loc(self, node: yaml.Node) -> str:
        return f"{self.path}:{line_of(node)}"

    def error(self, node: yaml.Node, message: str) -> None:
        self.errors.append(RuleError(message, self.loc(node)))

    def error_at(self, location: str, message: str) -> None:
        self.errors.append(RuleError(message, location))

    def data(self, node: yaml.Node) -> Any:
        return self._constructor.construct_document(node)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """Key -> (key node, value node); string keys only, each given once."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping, got {describe(node)}")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.data(key_node)
            if not isinstance(key, str):
                self.error(key_node, f"{what}: keys must be strings, got {key!r}")
                continue
            if key in out:
                self.error(key_node, f"{what}: {key!r} is given twice")
                continue
            out[key] = (key_node, value_node)
        return out

    def string(
        self, node: yaml.Node, what: str, pattern: re.Pattern[str] | None = None, hint: str = ""
    ) -> str | None:
        """A scalar as text (numbers too), matching ``pattern`` in full when given."""
        value = self.data(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(node, f"{what} must be a string, got {describe(node)}")
            return None
        text = str(value)
        if pattern is not None and not pattern.fullmatch(text):
            self.error(node, f"{what} {text!r} is invalid{hint}")
            return None
        return text

    def strings(
        self, node: yaml.Node, what: str, pattern: re.Pattern[str] | None = None, hint: str = ""
    ) -> tuple[str, ...] | None:
        """A list of strings, or one string as a list of one."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for item in items:
            text = self.string(item, what, pattern, hint)
            if text is None:
                return None
            out.append(text)
        return tuple(out)

    def number(self, node: yaml.Node, what: str) -> float | None:
        """A number (not a boolean, not NaN) as a float."""
        value = self.data(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            self.error(node, f"{what} must be a number, got {describe(node)}")
            return None
        return float(value)
