"""Rendering notification text with sandboxed Jinja templates from ``templates/``.

Layout: ``templates/<channel>/<event>.<part>.j2`` where ``event`` is ``firing``, ``resolved``,
``escalated``, ``acknowledged`` or ``test`` (a repeat notice uses ``firing`` with
``repeat`` true) and ``part`` is ``md`` (Slack/Discord), ``txt``, ``html`` or ``subject``
(email). A rule picks a template set with ``template: <set>``; the renderer then tries
``<set>/<channel>/<event>.<part>.j2`` first, in ``RULES_DIR/templates`` and then in
``templates/``, and falls back to the default file for anything the set does not override.

Templates run in :class:`jinja2.sandbox.SandboxedEnvironment` with ``StrictUndefined``;
``*.html.j2`` is autoescaped. Any template error (syntax, unknown variable, sandbox
violation) is logged, counted in :attr:`Renderer.errors`, and replaced by
:func:`plain_text` so the alert still goes out::

    renderer = Renderer([Path("templates")])
    text = renderer.render("slack", "firing", "md", context)

Label values, annotations, names and ``by`` come from producers, rule files and API callers,
so a template sees every string value of its context already escaped for its channel's
format (:func:`escape_context`, :data:`ESCAPES`): Slack mrkdwn gets ``&``, ``<``, ``>`` as
entities (``<!channel>``, ``<https://x|y>``, ``<@U123>`` arrive as text), Discord markdown
gets its markup characters backslash-escaped and mentions broken with a zero-width space,
and every channel gets control characters and line breaks as spaces (:func:`one_line`), so a
value cannot fake extra lines or headers. The template's own text is never touched; mapping
keys are not escaped (templates look values up by them, and label names are
``[a-zA-Z_][a-zA-Z0-9_.-]*`` by the event contract).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
EVENTS = ("firing", "resolved", "escalated", "acknowledged", "test")


# C0 and C1 controls (line breaks and tabs included), Unicode line and paragraph separators,
# and the bidirectional overrides that make text read in another order than it is stored
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
_SLACK = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# Discord markdown: emphasis, code, spoilers, masked links [text](url), quotes, headings,
# and <...> forms (mentions, channels, slash commands); a backslash makes each one text
_DISCORD_MARKUP = re.compile(r"([\\*_~`|\[\]<>#])")
_DISCORD_MENTION = re.compile(r"@(?=everyone\b|here\b|[!&]?[0-9])")


def one_line(text: str) -> str:
    """``text`` with each run of control characters, line breaks and bidi overrides as one
    space: plain text, an SMS or a mail subject cannot be given extra lines or headers."""
    return _CONTROL.sub(" ", text)


def slack_mrkdwn(text: str) -> str:
    """``text`` as literal Slack mrkdwn: ``&``, ``<`` and ``>`` as entities, so no
    ``<!channel>``, ``<@U123>`` or ``<https://x|y>`` link can be formed."""
    return one_line(text).translate(_SLACK)


def discord_markdown(text: str) -> str:
    """``text`` as literal Discord markdown: markup characters backslash-escaped, and a
    zero-width space after the ``@`` of ``@everyone``, ``@here`` and ``<@id>`` forms."""
    escaped = _DISCORD_MARKUP.sub(r"\\\1", one_line(text))
    return _DISCORD_MENTION.sub("@\u200b", escaped)


#: how a channel's templates see string values (any other channel: :func:`one_line`)
ESCAPES: dict[str, Callable[[str], str]] = {"slack": slack_mrkdwn, "discord": discord_markdown}


def escape_for(channel: str) -> Callable[[str], str]:
    """The escaping of values for ``channel``'s message format."""
    return ESCAPES.get(channel, one_line)


def escape_context(value: Any, escape: Callable[[str], str]) -> Any:
    """A copy of a template context with every string value passed through ``escape``
    (mapping keys as they are; numbers, None and booleans untouched)."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, Mapping):
        return {k: escape_context(v, escape) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_context(v, escape) for v in value]
    return value


def template_event(kind: str) -> str:
    """The template event of a notification kind (a repeat is rendered as firing)."""
    return "firing" if kind == "repeat" else kind


def title(context: Mapping[str, Any]) -> str:
    """A one-line headline: ``[FIRING:2] High error rate (critical)``."""
    alerts = context["alerts"]
    first = alerts[0]
    kind = str(context["event"]).upper()
    count = f":{len(alerts)}" if len(alerts) > 1 else ""
    return f"[{kind}{count}] {first['rule_name']} ({first['severity']})"


def plain_text(context: Mapping[str, Any]) -> str:
    """The fallback message when a template fails: headline plus one line per alert."""
    lines = [title(context)]
    for a in context["alerts"]:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a.get("labels", {}).items()))
        value = "" if a.get("value") is None else f" value={a['value']:g}"
        tenant = f" tenant={a['tenant']}" if a.get("tenant") else ""
        lines.append(f"- {a['rule_name']} [{a['state']}]{value}{tenant} {labels}".rstrip())
    return "\n".join(lines)


def build_context(kind: str, alerts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The variables every template sees; ``alerts`` are the outbox contexts of a group."""
    common: dict[str, str] = dict(alerts[0].get("labels", {})) if alerts else {}
    for a in alerts[1:]:
        common = {k: v for k, v in common.items() if a.get("labels", {}).get(k) == v}
    context: dict[str, Any] = {
        "event": kind,
        "status": "resolved" if kind == "resolved" else "firing",
        "repeat": kind == "repeat",
        "alerts": list(alerts),
        "alert": alerts[0] if alerts else {},
        "count": len(alerts),
        "common_labels": common,
        "level": max((int(a.get("level") or 0) for a in alerts), default=0),
        "by": next((a["by"] for a in alerts if a.get("by")), ""),
    }
    context["title"] = title(context) if alerts else ""
    return context


class Renderer:
    """Renders ``<channel>/<event>.<part>.j2``; never raises on a template problem."""

    def __init__(self, directories: Sequence[Path] = (TEMPLATES_DIR,)) -> None:
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(d) for d in directories]),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.errors = 0

    def render(
        self,
        channel: str,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        template_set: str | None = None,
    ) -> str:
        """Render a template, or the plain fallback (counted and logged) if it fails.

        ``context`` holds the values as they are; they are escaped here for ``channel``."""
        context = escape_context(context, escape_for(channel))
        event = template_event(kind)
        names = [f"{channel}/{event}.{part}.j2"]
        if template_set:
            names.insert(0, f"{template_set}/{channel}/{event}.{part}.j2")
        try:
            template = self.env.select_template(names)
            return template.render(**context).strip()
        except jinja2.TemplateError as exc:
            self.errors += 1
            where = getattr(exc, "name", None) or " or ".join(names)
            line = getattr(exc, "lineno", None)
            log.warning(
                "template %s%s failed (%s: %s); sending the plain default message",
                where,
                f":{line}" if line else "",
                type(exc).__name__,
                exc,
            )
            if part == "subject":
                return title(context)
            if part == "html":
                return f"<pre>{html.escape(plain_text(context))}</pre>"
            return plain_text(context)
