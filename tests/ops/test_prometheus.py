"""Prometheus and Alertmanager configuration: promtool/amtool checks, rule unit tests, and
real servers started here (own ports, own storage) scraping an exporter and delivering
alerts by email through the repository's Alertmanager routes.

The exporter scraped is the real one (``qesmon api``). Needs Debian's ``prometheus`` and
``prometheus-alertmanager`` packages (promtool, prometheus, amtool, prometheus-alertmanager):
``scripts/setup.sh --test`` installs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml
from aiosmtpd.controller import Controller
from psycopg.types.json import Jsonb

from qesmon import vocabulary as v
from qesmon.migrate import apply_migrations
from qesmon.settings import ApiSettings, Settings
from qesmon.sketch import Agg
from tests.support.faults import free_port
from tests.support.processes import QesmonProcess, settings_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "qes-alerts.yml"
ALERTMANAGER_YML = ROOT / "alertmanager" / "alertmanager.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards" / "qes-monitoring"
#: where docker-compose.yml mounts the exporter's bearer token for Prometheus
METRICS_TOKEN_FILE = "/run/secrets/qesmon_metrics_token"
#: the exporter's token in these tests
TOKEN = "ops-test-token-0123456789abcdef"

#: the six pre-configured alerts of the seed and the pipeline health alerts
EXPECTED_ALERTS = {
    "QesHighErrorRate": ("critical", "qes_error_rate"),
    "QesSlowResponseTime": ("warning", "qes_request_duration_seconds_sum"),
    "QesLowDiskSpace": ("warning", "qes_system_disk_usage_percent"),
    "QesQuotaExceeded": ("info", "qes_quota_utilization"),
    "QesHighCpuUsage": ("warning", "qes_system_cpu_usage_percent"),
    "QesHighMemoryUsage": ("critical", "qes_system_memory_usage_percent"),
    "QesPipelineStalled": ("critical", "qes_pipeline_heartbeat_age_seconds"),
    "QesPipelineLagGrowing": ("warning", "qes_pipeline_lag_entries"),
    "QesExporterDown": ("critical", 'up{job="qes-monitoring"}'),
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is missing: install Debian's prometheus packages (scripts/setup.sh --test)"
        )
    return path


def _run(*args: str, stderr: bool = True) -> str:
    """Run a tool, fail with its output unless it succeeds; its stdout (and stderr)."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + (result.stderr if stderr else "")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------- static checks --


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    shipped = PROMETHEUS_DIR / "prometheus.yml"
    _run(_tool("promtool"), "check", "config", "--syntax-only", str(shipped))
    # the full check also opens the files the config names: the token file only exists in
    # the Prometheus container, so here it is a file of this test
    config = yaml.safe_load(shipped.read_text())
    config["rule_files"] = [str(PROMETHEUS_DIR / p) for p in config["rule_files"]]
    _scrape_job(config)["authorization"]["credentials_file"] = str(_token_file(tmp_path))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = _run(_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS: 1 rule files found" in out
    out = _run(_tool("promtool"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out


def test_promtool_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    out = _run(_tool("promtool"), "test", "rules", *tests)
    assert "SUCCESS" in out


def test_every_alert_rule_is_unit_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == set(EXPECTED_ALERTS)
    assert quiet == set(EXPECTED_ALERTS)


def test_alert_rules_use_the_exporter_metric_names_and_severities() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) == set(EXPECTED_ALERTS)
    for name, (severity, metric) in EXPECTED_ALERTS.items():
        assert rules[name]["labels"]["severity"] == severity, name
        assert metric in rules[name]["expr"], name
        assert {"summary", "description", "runbook"} <= set(rules[name]["annotations"]), name


def _scrape_job(config: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = next(
        j for j in config["scrape_configs"] if j["job_name"] == "qes-monitoring"
    )
    return job


def _token_file(tmp: Path, token: str = TOKEN) -> Path:
    path = tmp / "metrics-token"
    path.write_text(token + "\n")  # as a secret file usually ends; Prometheus trims it
    return path


def test_scrape_job_targets_the_api_exporter_port_with_its_token() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = _scrape_job(config)
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["api:8001"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": METRICS_TOKEN_FILE}
    assert "basic_auth" not in job and "bearer_token" not in job  # no secret in the file
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]


def test_amtool_accepts_the_alertmanager_config_and_routes_by_severity() -> None:
    _run(_tool("amtool"), "check-config", str(ALERTMANAGER_YML))
    expected = {"critical": "oncall-email", "warning": "team-email", "info": "dashboard-only"}
    for severity, receiver in expected.items():
        out = _run(
            _tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_YML}",
            "alertname=QesAnything",
            f"severity={severity}",
            stderr=False,
        )
        assert out.strip() == receiver, (severity, out)


# ---------------------------------------------------------------- real servers --


class _Mailbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


@pytest.fixture(scope="module")
def exporter(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``qesmon api`` on loopback ports, over a database of its own with one quota at 95%.

    Yields the exporter port. The quota row is what the pipeline writes for a
    ``quota_utilization`` event (one 10 s window), so the exporter reports
    ``qes_quota_utilization{tenant_id="t-1",resource="signatures"} 95``.
    """
    server_url = base_settings.database_url
    dbname = f"qesmon_prom_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    url = urlunsplit(urlsplit(server_url)._replace(path="/" + dbname))
    proc = None
    try:
        apply_migrations(url)
        agg = Agg()
        agg.add(95.0, True, None)
        bucket = datetime.fromtimestamp((time.time() // 10 - 2) * 10, UTC)
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO series (name, type, tenant_id, labels) VALUES (%s, 'usage', 't-1', %s)"
                " RETURNING id",
                (v.QUOTA_UTILIZATION, Jsonb({"resource": "signatures"})),
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO metric_rollups_10s (bucket, width_s, series_id, count, errors, sum,"
                " min, max, p50, p95, p99, distinct_users, sketch)"
                " VALUES (%s, 10, %s, 1, 0, 95, 95, 95, 95, 95, 95, 0, %s)",
                (bucket, row[0], agg.to_bytes()),
            )
        settings = Settings(
            redis_url=base_settings.redis_url,
            database_url=url,
            key_prefix=f"prom{uuid.uuid4().hex[:8]}",
            api=ApiSettings(port=free_port(), metrics_port=free_port()),
        )
        env = settings_env(
            settings,
            API_HOST="127.0.0.1",
            API_PORT=str(settings.api.port),
            PROMETHEUS_METRICS_PORT=str(settings.api.metrics_port),
            PROMETHEUS_METRICS_BEARER_TOKEN=TOKEN,
        )
        log = tmp_path_factory.mktemp("api") / "api.log"
        proc = QesmonProcess(["api"], env, log).start()
        metrics_url = f"http://127.0.0.1:{settings.api.metrics_port}/metrics"

        def quota_exported() -> bool:
            assert proc is not None and proc.alive(), f"qesmon api exited:\n{proc and proc.log()}"
            request = urllib.request.Request(
                metrics_url, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                return False
            return 'qes_quota_utilization{resource="signatures",tenant_id="t-1"} 95.0' in text

        wait_for(quota_exported, 30, "qesmon api to export the quota", interval=0.2)
        yield settings.api.metrics_port
    finally:
        if proc is not None:
            proc.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _start(args: list[str], log: Path, ready_url: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        assert proc.poll() is None, f"{args[0]} exited:\n{log.read_text(errors='replace')}"
        try:
            with urllib.request.urlopen(ready_url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(ready, 30, f"{args[0]} to be ready", interval=0.1)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _prometheus_config(
    tmp: Path,
    exporter_port: int,
    am_port: int | None,
    rule_files: list[Path],
    token: str = TOKEN,
) -> Path:
    """The repository's prometheus.yml with loopback targets, fast intervals, and the
    exporter's token in a file of this test instead of the compose secret."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(p) for p in rule_files]
    job = _scrape_job(config)
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    job["authorization"]["credentials_file"] = str(_token_file(tmp, token))
    config["scrape_configs"] = [job]
    if am_port is None:
        del config["alerting"]
    else:
        config["alerting"]["alertmanagers"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{am_port}"]}
        ]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_prometheus(tmp: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [
        _tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # A rule can fire before the Alertmanager is discovered; resend soon, not after 1 min.
        "--rules.alert.resend-delay=1s",
    ]
    return _start(args, tmp / "prometheus.log", f"{base}/-/ready"), base


def test_real_prometheus_scrapes_the_exporter_and_evaluates_the_rules(
    exporter: int, tmp_path: Path
) -> None:
    config = _prometheus_config(tmp_path, exporter, None, [RULES])
    _run(_tool("promtool"), "check", "config", str(config))
    proc, base = _run_prometheus(tmp_path, config)
    try:

        def target_up() -> dict[str, Any] | None:
            targets = _get(f"{base}/api/v1/targets")["data"]["activeTargets"]
            up = [
                t for t in targets if t["labels"]["job"] == "qes-monitoring" and t["health"] == "up"
            ]
            return up[0] if up else None

        target = wait_for(target_up, 20, "the qes-monitoring target to be up", interval=0.2)
        assert target["scrapeUrl"] == f"http://127.0.0.1:{exporter}/metrics"

        def quota_rule_pending() -> list[dict[str, Any]] | None:
            groups = _get(f"{base}/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            pending = [r["name"] for r in rules if r["state"] == "pending"]
            return rules if pending == ["QesQuotaExceeded"] else None

        # 95% > 90%: pending, waiting for its `for: 1m`; every other rule quiet and healthy.
        rules = wait_for(quota_rule_pending, 20, "QesQuotaExceeded to be pending", interval=0.2)
        assert sorted(r["name"] for r in rules) == sorted(EXPECTED_ALERTS)
        assert all(r["health"] == "ok" for r in rules), rules
        assert [r["name"] for r in rules if r["state"] == "firing"] == []

        # The Prometheus panels of the dashboards are valid PromQL for this server.
        for path in DASHBOARDS.glob("*.json"):
            for panel in json.loads(path.read_text())["panels"]:
                for target_ in panel["targets"]:
                    if "expr" in target_:
                        query = urllib.parse.urlencode({"query": target_["expr"]})
                        answer = _get(f"{base}/api/v1/query?{query}")
                        assert answer["status"] == "success", (panel["title"], answer)
    finally:
        _stop(proc)


def test_a_prometheus_without_the_token_gets_401_from_the_exporter(
    exporter: int, tmp_path: Path
) -> None:
    config = _prometheus_config(tmp_path, exporter, None, [], token="not-the-token-0123456789")
    proc, base = _run_prometheus(tmp_path, config)
    try:

        def scraped_once() -> dict[str, Any] | None:
            targets = _get(f"{base}/api/v1/targets")["data"]["activeTargets"]
            done = [t for t in targets if t["health"] != "unknown"]
            return done[0] if done else None

        target = wait_for(scraped_once, 20, "the first scrape", interval=0.2)
        assert target["health"] == "down"
        assert "401" in target["lastError"], target["lastError"]
    finally:
        _stop(proc)


def test_alerts_reach_the_right_mailbox_through_the_repository_routes(
    exporter: int, tmp_path: Path
) -> None:
    """Prometheus -> Alertmanager (alertmanager.yml, SMTP relay moved to loopback) -> email."""
    mailbox = _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    am_config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    am_config["global"].update(smtp_smarthost=f"127.0.0.1:{smtp.port}", smtp_require_tls=False)
    for route in [am_config["route"], *am_config["route"]["routes"]]:
        route.update(group_wait="0s", group_interval="1s")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
    rules = tmp_path / "fire-now.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "fire-now",
                        "rules": [
                            {
                                "alert": f"OpsTest{sev.title()}",
                                "expr": "vector(1)",
                                "labels": {"severity": sev},
                            }
                            for sev in ("critical", "warning", "info")
                        ],
                    }
                ]
            }
        )
    )
    am_port = free_port()
    am = _start(
        [
            _tool("prometheus-alertmanager"),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "alertmanager.log",
        f"http://127.0.0.1:{am_port}/-/ready",
    )
    prom = None
    try:
        config = _prometheus_config(tmp_path, exporter, am_port, [rules])
        prom, _ = _run_prometheus(tmp_path, config)

        def two_mails() -> list[tuple[list[str], bytes]] | None:
            with mailbox.lock:
                return list(mailbox.messages) if len(mailbox.messages) >= 2 else None

        received = wait_for(two_mails, 30, "the critical and warning emails", interval=0.2)
        by_rcpt = {tuple(rcpt): message_from_bytes(body) for rcpt, body in received}
        assert set(by_rcpt) == {("oncall@example.com",), ("platform-team@example.com",)}
        assert "OpsTestCritical" in by_rcpt[("oncall@example.com",)]["Subject"]
        assert "OpsTestWarning" in by_rcpt[("platform-team@example.com",)]["Subject"]
        assert by_rcpt[("oncall@example.com",)]["From"] == am_config["global"]["smtp_from"]

        # The info alert reached Alertmanager but went to the silent receiver.
        alerts = _get(f"http://127.0.0.1:{am_port}/api/v2/alerts")
        info = [a for a in alerts if a["labels"]["alertname"] == "OpsTestInfo"]
        assert [r["name"] for r in info[0]["receivers"]] == ["dashboard-only"]
        with mailbox.lock:
            assert all(
                "OpsTestInfo" not in body.decode(errors="replace") for _, body in mailbox.messages
            )
    finally:
        if prom is not None:
            _stop(prom)
        _stop(am)
        smtp.stop()
