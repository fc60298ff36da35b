"""Who may scrape the exporter, where it listens, and what it says about tenants.

A real ``qesmon api`` on loopback with a bearer token and basic credentials answers 401 to
anything but them; one asked to listen beyond loopback without credentials does not start;
``PROMETHEUS_TENANT_SERIES=false`` leaves no ``tenant_id`` label in a real scrape.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import math
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from api.app import create_app
from api.exporter import EXPORTER, create_exporter_app, without_tenants
from qesmon.errors import ConfigError
from qesmon.settings import Settings
from tests.api.conftest import load_events
from tests.api.test_exporter import samples
from tests.api.workload import DAY, workload
from tests.support.faults import free_port
from tests.support.processes import QesmonProcess, settings_env, wait_for

TOKEN = "0123456789abcdef0123456789abcdef"
USER, PASSWORD = "prometheus", "correct horse battery staple"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def scrape(port: int, authorization: str | None = None, path: str = "/metrics") -> Any:
    """One GET over real TCP; the http.client response, body read into ``.body``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {} if authorization is None else {"Authorization": authorization}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.body = response.read()
        return response
    finally:
        conn.close()


@dataclasses.dataclass
class Served:
    proc: QesmonProcess
    port: int


@pytest.fixture(scope="module")
def served(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``qesmon api`` with the exporter on its default address, guarded by both schemes."""
    port = free_port()
    env = settings_env(
        base_settings,
        API_PORT=str(free_port()),
        PROMETHEUS_METRICS_PORT=str(port),
        PROMETHEUS_METRICS_BEARER_TOKEN=TOKEN,
        PROMETHEUS_METRICS_BASIC_AUTH=f"{USER}:{PASSWORD}",
        RESOURCE_MONITOR="false",
        LOG_LEVEL="INFO",  # the start-up log with the configuration, to check the masking
    )
    env.pop("PROMETHEUS_METRICS_HOST", None)
    proc = QesmonProcess(["api"], env, tmp_path_factory.mktemp("api") / "api.log").start()

    def answers() -> bool:
        assert proc.alive(), f"qesmon api exited:\n{proc.log()}"
        try:
            return bool(scrape(port).status == 401)
        except OSError:
            return False

    try:
        wait_for(answers, 30, "the exporter to answer", interval=0.1)
        yield Served(proc, port)
    finally:
        proc.stop()


def test_a_scrape_without_credentials_is_401_with_a_challenge_per_scheme(served: Served) -> None:
    response = scrape(served.port)
    assert response.status == 401
    assert sorted(response.headers.get_all("WWW-Authenticate")) == [
        'Basic realm="qesmon-exporter", charset="UTF-8"',
        'Bearer realm="qesmon-exporter"',
    ]
    assert b"qes_" not in response.body
    # every path is behind the same door: an unknown one does not say that it is unknown
    assert scrape(served.port, path="/nothing").status == 401


def test_the_right_bearer_token_or_basic_credentials_get_the_metrics(served: Served) -> None:
    for authorization in (f"Bearer {TOKEN}", f"bearer  {TOKEN} ", basic(USER, PASSWORD)):
        response = scrape(served.port, authorization)
        assert response.status == 200, authorization
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        assert b"# TYPE qes_revenue_total counter" in response.body


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN.upper()}",
        f"Token {TOKEN}",
        TOKEN,
        f"Basic {TOKEN}",  # the token is not a basic credential
        basic(USER, PASSWORD + "x"),
        basic(USER.upper(), PASSWORD),
        basic(USER, ""),
        basic("", PASSWORD),
        "Basic " + base64.b64encode(f"{USER}{PASSWORD}".encode()).decode(),
        "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()[:-2],
        "Basic !!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:\x00\x01").decode(),
        f"Bearer {'A' * 6000}",
        f"Bearer {TOKEN}, {basic(USER, PASSWORD)}",
    ],
)
def test_anything_else_is_the_same_401(served: Served, authorization: str) -> None:
    response = scrape(served.port, authorization)
    assert response.status == 401
    assert b"qes_" not in response.body


def test_bytes_that_are_no_text_in_the_header_are_refused_not_crashed_on(served: Served) -> None:
    for raw in (b"Bearer \xff\xfe" + TOKEN.encode(), b"Bearer " + TOKEN.encode() + b"\xc3"):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: " + raw + b"\r\n"
                b"Connection: close\r\n\r\n"
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 401), answer[:200]
    assert served.proc.alive()


def test_the_exporter_listens_on_loopback_only_by_default(served: Served) -> None:
    assert served.proc.proc is not None
    listening = [
        c.laddr
        for c in psutil.Process(served.proc.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == served.port
    ]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}


def test_the_start_up_log_names_the_schemes_and_never_the_secrets(served: Served) -> None:
    log = served.proc.log()
    assert "scrapes need the bearer token or basic auth" in log
    assert f"{USER}:***" in log  # the configuration line, masked
    assert TOKEN not in log and TOKEN[4:] not in log
    assert PASSWORD not in log


def test_qesmon_api_refuses_to_expose_the_exporter_without_credentials(
    base_settings: Settings, tmp_path: Path
) -> None:
    api_port = free_port()
    env = settings_env(
        base_settings,
        API_PORT=str(api_port),
        PROMETHEUS_METRICS_PORT=str(free_port()),
        PROMETHEUS_METRICS_HOST="0.0.0.0",
    )
    for name in ("BEARER_TOKEN", "BASIC_AUTH", "ALLOW_UNAUTHENTICATED"):
        env.pop(f"PROMETHEUS_METRICS_{name}", None)
    result = subprocess.run(
        [sys.executable, "-m", "cli", "api"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PROMETHEUS_METRICS_HOST '0.0.0.0' is not a loopback address" in result.stderr
    assert "PROMETHEUS_METRICS_BEARER_TOKEN" in result.stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", api_port), timeout=2):
        pass  # the API never started either


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.0.2.10", "exporter.internal", "::ffff:127.0.0.1"]
)
def test_any_other_address_needs_credentials_or_the_explicit_opt_out(host: str) -> None:
    with pytest.raises(ConfigError, match="is not a loopback address"):
        Settings.from_env({"PROMETHEUS_METRICS_HOST": host})
    for extra in (
        {"PROMETHEUS_METRICS_BEARER_TOKEN": TOKEN},
        {"PROMETHEUS_METRICS_BASIC_AUTH": f"{USER}:{PASSWORD}"},
        {"PROMETHEUS_METRICS_ALLOW_UNAUTHENTICATED": "true"},
    ):
        settings = Settings.from_env({"PROMETHEUS_METRICS_HOST": host, **extra})
        assert settings.api.metrics_host == host
    with pytest.raises(ConfigError):
        Settings.from_env(
            {"PROMETHEUS_METRICS_HOST": host, "PROMETHEUS_METRICS_ALLOW_UNAUTHENTICATED": "false"}
        )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"])
def test_loopback_needs_no_credentials(host: str) -> None:
    assert Settings.from_env({"PROMETHEUS_METRICS_HOST": host}).api.metrics_host == host


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROMETHEUS_METRICS_BEARER_TOKEN": "short"}, "at least 16 characters"),
        ({"PROMETHEUS_METRICS_BEARER_TOKEN": TOKEN + " x"}, "expected letters, digits"),
        ({"PROMETHEUS_METRICS_BEARER_TOKEN": TOKEN + "\n"}, "expected letters, digits"),
        ({"PROMETHEUS_METRICS_BEARER_TOKEN": "=" + TOKEN}, "expected letters, digits"),
        ({"PROMETHEUS_METRICS_BEARER_TOKEN": "${QESMON_SECRET_X}"}, "expected letters"),
        ({"PROMETHEUS_METRICS_BASIC_AUTH": PASSWORD}, "expected user:password"),
        ({"PROMETHEUS_METRICS_BASIC_AUTH": f":{PASSWORD}"}, "expected user:password"),
        ({"PROMETHEUS_METRICS_BASIC_AUTH": f"{USER}:short"}, "at least 16 characters"),
        ({"PROMETHEUS_METRICS_BASIC_AUTH": f"{USER}:{PASSWORD}\r\nX: y"}, "control characters"),
        ({"PROMETHEUS_METRICS_BASIC_AUTH": f"{USER}\x00:{PASSWORD}"}, "control characters"),
    ],
)
def test_weak_or_malformed_credentials_stop_the_start(env: dict[str, str], message: str) -> None:
    name = next(iter(env))
    with pytest.raises(ConfigError, match=f"^{name}=.* is invalid: .*{message}"):
        Settings.from_env(env)


def test_the_configuration_log_masks_both_credentials() -> None:
    described = repr(
        Settings.from_env(
            {
                "PROMETHEUS_METRICS_BEARER_TOKEN": TOKEN,
                "PROMETHEUS_METRICS_BASIC_AUTH": f"{USER}:{PASSWORD}",
            }
        ).describe()
    )
    assert TOKEN[4:] not in described and PASSWORD not in described
    assert f"'{USER}:***'" in described


async def test_with_basic_auth_alone_a_bearer_token_is_refused(
    aiohttp_client: Any, settings: Settings
) -> None:
    api = dataclasses.replace(settings.api, metrics_basic_auth=f"{USER}:{PASSWORD}")
    app = create_app(dataclasses.replace(settings, api=api), monitor=False)
    await aiohttp_client(app)
    client = await aiohttp_client(create_exporter_app(app))
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert resp.status == 401
    assert resp.headers.getall("WWW-Authenticate") == [
        'Basic realm="qesmon-exporter", charset="UTF-8"'
    ]
    resp = await client.get("/metrics", headers={"Authorization": basic(USER, PASSWORD)})
    assert resp.status == 200


# ------------------------------------------------------------------ tenant series --


async def test_tenant_series_off_leaves_no_tenant_label_and_the_same_totals(
    aiohttp_client: Any, settings: Settings
) -> None:
    now = time.time()
    events = workload(now)
    load_events(settings, events)
    api = dataclasses.replace(settings.api, tenant_series=False)
    app = create_app(dataclasses.replace(settings, api=api), monitor=False)
    await aiohttp_client(app)
    await app[EXPORTER].refresh()
    client = await aiohttp_client(create_exporter_app(app))
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    got = samples(text)

    assert "tenant_id" not in text
    revenue: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    for e in events:
        if e.name == "subscription_payment":
            revenue[tuple(sorted(e.labels.items()))] += e.value
    assert revenue
    for labels, total in revenue.items():
        assert got[("qes_revenue_total", labels)] == pytest.approx(total)
    signatures = sum(e.value for e in events if e.name == "signatures_created")
    assert got[("qes_usage_total", (("kind", "signatures"),))] == pytest.approx(signatures)
    # the fullest tenant's quota (tenant-a is at 92 % in the workload)
    assert got[("qes_quota_utilization", (("resource", "signatures"),))] == 92.0
    users_7d = {(e.tenant, e.user) for e in events if e.user and e.ts >= now - 7 * DAY}
    assert got[("qes_users_active", (("period", "7d"),))] == len(users_7d)
    assert ("qes_requests_total", ()) not in got  # untouched families keep their labels
    assert any(name == "qes_requests_total" and labels for name, labels in got)


def test_folding_sums_counters_and_histograms_and_drops_unknown_per_tenant_gauges() -> None:
    revenue = CounterMetricFamily("qes_revenue", "r", labels=["tenant_id", "plan"])
    revenue.add_metric(["a", "pro"], 1.5)
    revenue.add_metric(["b", "pro"], 2.0)
    revenue.add_metric(["b", "free"], 0.25)
    durations = HistogramMetricFamily("qes_d_seconds", "d", labels=["tenant_id"])
    durations.add_metric(["a"], [("0.1", 1.0), ("+Inf", 2.0)], 0.5)
    durations.add_metric(["b"], [("0.1", 3.0), ("+Inf", 3.0)], 0.25)
    quota = GaugeMetricFamily("qes_quota_utilization", "q", labels=["tenant_id"])
    quota.add_metric(["a"], 40.0)
    quota.add_metric(["b"], 95.0)
    secret = GaugeMetricFamily("qes_new_per_tenant_gauge", "x", labels=["tenant_id"])
    secret.add_metric(["a"], 1.0)
    plain = GaugeMetricFamily("qes_cpu", "c", labels=["host"])
    plain.add_metric(["h"], 3.0)

    folded = {f.name: f for f in without_tenants([revenue, durations, quota, secret, plain])}

    assert set(folded) == {"qes_revenue", "qes_d_seconds", "qes_quota_utilization", "qes_cpu"}
    as_dict = {name: [(s.name, s.labels, s.value) for s in f.samples] for name, f in folded.items()}
    assert as_dict["qes_revenue"] == [
        ("qes_revenue_total", {"plan": "pro"}, 3.5),
        ("qes_revenue_total", {"plan": "free"}, 0.25),
    ]
    assert as_dict["qes_d_seconds"] == [
        ("qes_d_seconds_bucket", {"le": "0.1"}, 4.0),
        ("qes_d_seconds_bucket", {"le": "+Inf"}, 5.0),
        ("qes_d_seconds_count", {}, 5.0),
        ("qes_d_seconds_sum", {}, 0.75),
    ]
    assert as_dict["qes_quota_utilization"] == [("qes_quota_utilization", {}, 95.0)]
    assert folded["qes_cpu"] is plain
    assert all(not math.isnan(s.value) for f in folded.values() for s in f.samples)


async def test_promtool_accepts_the_exposition_without_tenants(
    aiohttp_client: Any, settings: Settings
) -> None:
    load_events(settings, workload(time.time()))
    api = dataclasses.replace(settings.api, tenant_series=False)
    app: web.Application = create_app(dataclasses.replace(settings, api=api), monitor=False)
    await aiohttp_client(app)
    await app[EXPORTER].refresh()
    text = app[EXPORTER].render()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
