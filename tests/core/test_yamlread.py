"""The line-tracking YAML reader: key paths find their lines, errors name file:line."""

from __future__ import annotations

import pytest

from qesmon.errors import RuleError
from qesmon.yamlread import NodeReader, compose_all, compose_one, line_at, node_at

TEXT = """\
escalation_policies:
  on.call:
    levels:
      - {after: 0, channels: [slack]}
      - after: 5m
        channels:
          - sms
"""


def test_a_key_path_finds_the_line_of_its_key_or_list_item() -> None:
    root = compose_one(TEXT, "f.yaml")
    assert root is not None
    assert line_at(root, "escalation_policies.on.call") == 2  # a key may hold dots
    assert line_at(root, "escalation_policies.on.call.levels[1]") == 5
    assert line_at(root, "escalation_policies.on.call.levels[1].channels") == 6
    assert node_at(root, "escalation_policies.on.call.levels[0].channels").value[0].value == "slack"


def test_a_key_path_that_goes_further_than_the_file_stops_at_the_last_node_found() -> None:
    root = compose_one(TEXT, "f.yaml")
    assert root is not None
    assert line_at(root, "escalation_policies.on.call.levels[7]") == 3
    assert line_at(root, "escalation_policies.nope.levels") == 1


def test_yaml_errors_name_file_and_line() -> None:
    with pytest.raises(RuleError, match=r"^f\.yaml:3: YAML error: mapping values are not allowed"):
        compose_all("a: 1\nb: 2\n  c: 3\n", "f.yaml")
    assert len(compose_all("a: 1\n---\nb: 2\n", "f.yaml")) == 2
    with pytest.raises(RuleError, match=r"^f\.yaml:2: YAML error: a second document"):
        compose_one("a: 1\n---\nb: 2\n", "f.yaml")


def test_the_reader_records_every_problem_with_its_line_and_goes_on() -> None:
    (doc,) = compose_all("name: [x]\ncount: many\nname2: ok\n", "f.yaml")
    reader = NodeReader("f.yaml")
    fields = reader.mapping(doc, "a thing")
    assert fields is not None
    assert reader.string(fields["name"][1], "name") is None
    assert reader.number(fields["count"][1], "count") is None
    assert reader.string(fields["name2"][1], "name2") == "ok"
    assert [str(e) for e in reader.errors] == [
        "f.yaml:1: name must be a string, got a list",
        "f.yaml:2: count must be a number, got str 'many'",
    ]


@pytest.mark.parametrize(
    ("text", "line", "tag"),
    [
        ("id: !foo x\n", 1, "'!foo'"),
        ("a: 1\nb: [1, !!python/object:os.system x]\n", 2, "python/object:os.system"),
        ("a: 1\nb:\n  c: !!binary aGk=\n", 3, None),  # a standard tag the safe loader builds
    ],
)
def test_unknown_tags_are_yaml_errors_at_their_line_not_exceptions(
    text: str, line: int, tag: str | None
) -> None:
    if tag is None:
        compose_all(text, "f.yaml")
        compose_one(text, "f.yaml")
        return
    for compose in (compose_all, compose_one):
        with pytest.raises(RuleError, match=rf"^f\.yaml:{line}: YAML error: unknown tag .*{tag}"):
            compose(text, "f.yaml")


def test_self_referencing_anchors_are_read_without_looping() -> None:
    (doc,) = compose_all("a: &x [1, *x]\n", "f.yaml")
    assert doc is not None
