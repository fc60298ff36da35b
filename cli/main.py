"""``qesmon``: the one command line entry point.

Subcommands: ``up`` (everything, in the foreground, each process supervised and restarted
when it exits: :mod:`cli.supervisor`), ``pipeline``, ``notifier``, ``api``, ``migrate``,
``maintain`` (:mod:`cli.maintain`), ``rules check``, ``keys create|list|revoke|rotate``,
``demo``. This is the only module that reads the environment; each subcommand's implementation
lives in its own package and receives a :class:`~qesmon.settings.Settings`. The console script
``qesmon`` and ``python -m cli`` both run :func:`main`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from qesmon.errors import QesmonError
from qesmon.settings import Settings

log = logging.getLogger("qesmon")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qesmon", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="migrate, then run pipeline, notifier and API until Ctrl-C (restarting what exits)",
    )
    up.add_argument("--no-demo", action="store_true", help="do not start demo traffic")

    pipe = sub.add_parser("pipeline", help="run the Bytewax dataflow")
    pipe.add_argument("-w", "--workers-per-process", type=int, default=1)
    pipe.add_argument("-i", "--process-id", type=int, default=None)
    pipe.add_argument("-a", "--addresses", default=None, help='"host:port;host:port" of processes')
    pipe.add_argument(
        "-p",
        "--processes",
        type=int,
        default=1,
        help="start this many local processes (Bytewax cluster on localhost)",
    )
    pipe.add_argument("--recovery-dir", type=Path, default=None)

    sub.add_parser("notifier", help="run the notifier (consumer group on the alerts stream)")
    sub.add_parser("api", help="run the REST API and the Prometheus exporter")
    sub.add_parser("migrate", help="apply pending database migrations")
    maintain = sub.add_parser(
        "maintain", help="keep data within its retention: merge day rollups, drop, delete"
    )
    maintain.add_argument(
        "--dry-run", action="store_true", help="print what a pass would do, change nothing"
    )
    maintain.add_argument(
        "--every", type=_every, default=None, help="a pass now and then every DURATION, e.g. 10m"
    )

    rules = sub.add_parser("rules", help="rule file tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate rule files (default: RULES_DIR)")
    check.add_argument("paths", nargs="*", type=Path)

    keys = sub.add_parser("keys", help="API key tools")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    create.add_argument("--role", choices=("admin", "responder", "viewer"), required=True)
    create.add_argument("--tenant", default=None, help="restrict the key to one tenant")
    create.add_argument("--name", default="", help="a note saying who the key is for")
    create.add_argument(
        "--expires", type=_duration, default=None, help="lifetime such as 90d, 12h or 2w"
    )
    keys_sub.add_parser("list", help="list keys (id, prefix, role, tenant, status; no secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key (refused within 10 s)")
    revoke.add_argument("id", type=int)
    rotate = keys_sub.add_parser("rotate", help="give a key a new secret and print it once")
    rotate.add_argument("id", type=int)

    demo = sub.add_parser("demo", help="push synthetic QES platform traffic")
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.add_argument("--tenants", type=int, default=4)
    demo.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    demo.add_argument("--backfill", default=None, help="write the past period first, e.g. 7d")
    demo.add_argument(
        "--backfill-rate",
        type=float,
        default=0.05,
        help="backfill request events per second of history (default 0.05)",
    )
    demo.add_argument("--speed", type=float, default=1.0, help="run incidents N times faster")
    demo.add_argument("--seed", type=int, default=1, help="the same seed gives the same events")
    demo.add_argument(
        "--no-receiver", action="store_true", help="no webhook receiver, webhook channel untouched"
    )
    demo.add_argument(
        "--receiver-port", type=int, default=0, help="the receiver's loopback port (0: any)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except QesmonError as exc:
        print(f"qesmon: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args, settings)
    except QesmonError as exc:
        print(f"qesmon {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _duration(text: str) -> object:
    from api.keys import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _every(text: str) -> float:
    from qesmon.settings import duration

    try:
        seconds = duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 1:
        raise argparse.ArgumentTypeError("at least 1s between passes")
    return seconds


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from api import keys

    action = args.keys_command
    if action == "create":
        return keys.create_key_cli(
            settings, role=args.role, tenant=args.tenant, name=args.name, expires_in=args.expires
        )
    if action == "list":
        return keys.list_keys_cli(settings)
    if action == "revoke":
        return keys.revoke_key_cli(settings, args.id)
    if action == "rotate":
        return keys.rotate_key_cli(settings, args.id)
    raise AssertionError(action)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command != "rules":
        log.info("configuration: %s", json.dumps(settings.describe(), default=str))
    if command == "migrate":
        from qesmon.migrate import apply_migrations

        applied = apply_migrations(settings.database_url)
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        return 0
    if command == "maintain":
        from cli.maintain import main as maintain_main

        return maintain_main(settings, dry_run=args.dry_run, every=args.every)
    if command == "pipeline":
        from pipeline.run import main as pipeline_main

        return pipeline_main(settings, args, relaunch=[sys.executable, "-m", "cli", "pipeline"])
    if command == "notifier":
        from notifier.service import main as notifier_main

        return notifier_main(settings)
    if command == "api":
        from api.app import main as api_main

        return api_main(settings)
    if command == "rules":
        from rules.check import main as rules_check

        return rules_check(args.paths or [settings.rules_dir])
    if command == "keys":
        return _keys(settings, args)
    if command == "demo":
        from cli.demo import main as demo_main

        return demo_main(settings, args)
    if command == "up":
        return _up(settings, args)
    raise AssertionError(command)


def _die_with_parent() -> None:
    """In a child of ``qesmon up``: get SIGTERM when ``qesmon up`` dies, however it dies, so
    no process is left running on its own (Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _child_env(
    env: Mapping[str, str], redis_url: str | None, database_url: str | None
) -> dict[str, str]:
    """A child's environment: ``env`` with ``redis_url`` (its own Redis user) as its
    ``REDIS_URL``, ``database_url`` (its own database role) as its ``DATABASE_URL``, and none
    of the other credentials ``qesmon up`` holds (the other children's, the producer's, the
    admin's ``QESMON_PRIVATE_REDIS_URL``)."""
    out = {
        k: v
        for k, v in env.items()
        if not (k.startswith("QESMON_") and k.endswith(("_REDIS_URL", "_DATABASE_URL")))
    }
    if redis_url is not None:
        out["REDIS_URL"] = redis_url
    if database_url is not None:
        out["DATABASE_URL"] = database_url
    return out


def _up(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, then run every process as a supervised child until Ctrl-C or SIGTERM.

    A child that exits is restarted with backoff while the others keep running (the demo,
    which may end on its own, is not); see :mod:`cli.supervisor`. A second Ctrl-C kills
    the children instead of waiting for them. The pipeline, notifier and API each get the
    Redis user and the database role of their own that ``settings.up`` names; ``up`` itself
    and the demo keep ``REDIS_URL`` and ``DATABASE_URL``, and so does ``maintain`` (which drops
    chunks: the tables' owner) for the database."""
    from cli.demo import notifier_rules_dir, session
    from cli.demo.notify import free_port, outbound_allow
    from cli.supervisor import Spec, Supervisor
    from qesmon.migrate import apply_migrations

    apply_migrations(settings.database_url)
    # the data lifecycle: a `qesmon maintain` pass every 10 minutes (cli/maintain.py)
    commands = [["pipeline"], ["notifier"], ["api"], ["maintain", "--every", "10m"]]
    env = dict(os.environ)
    envs = {
        "pipeline": _child_env(
            env, settings.up.pipeline_redis_url, settings.up.pipeline_database_url
        ),
        "notifier": _child_env(
            env, settings.up.notifier_redis_url, settings.up.notifier_database_url
        ),
        "api": _child_env(env, settings.up.api_redis_url, settings.up.api_database_url),
        # it uses the database alone: no Redis credentials at all
        "maintain": {k: v for k, v in _child_env(env, None, None).items() if k != "REDIS_URL"},
    }
    demo_off = session.why_no_demo(settings, no_demo=args.no_demo)
    routing = None
    if demo_off is None:
        # the demo's receiver listens on loopback, which the outbound guard refuses: the
        # notifier may reach exactly its port (the demo gets the same list, to check it)
        port = free_port()
        commands.append(["demo", "--backfill", "7d", "--receiver-port", str(port)])
        # the demo routes alerts to its own webhook receiver (the notifier reads routing
        # from RULES_DIR only, so it gets a directory of its own)
        routing = notifier_rules_dir(settings.rules_dir, Path("var/demo"))
        envs["notifier"]["RULES_DIR"] = str(routing)
        allow = outbound_allow(settings, port)
        envs["notifier"]["OUTBOUND_ALLOW"] = allow
        envs["demo"] = {**env, "OUTBOUND_ALLOW": allow}
    key = session.create_session_key(settings)
    supervisor = Supervisor(
        [
            Spec(
                command[0],
                [sys.executable, "-m", "cli", *command],
                envs.get(command[0], env),
                restart=command[0] != "demo",
            )
            for command in commands
        ],
        redis_url=settings.redis_url,
        key=settings.streams.key("health", "supervisor"),
        preexec_fn=_die_with_parent,
    )

    def _stop(signum: int, frame: object) -> None:
        supervisor.stop()

    def _banner() -> None:
        print(session.up_banner(settings, key, demo_off, routing), flush=True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        supervisor.run(on_started=_banner)
    finally:
        session.revoke_key(settings, key)
    return 0
