"""docker-compose.yml, the Dockerfile and the Grafana provisioning, checked against the code.

There is no Docker engine on the test machines, so the compose file is checked statically:
images and builds, mounted files, volumes, dependencies and start order, environment
variable names against ``qesmon.settings.ENV``, ports against the settings and
prometheus.yml, and no secret written into the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qesmon.errors import ConfigError
from qesmon.settings import ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
QESMON_SERVICES = ("migrate", "maintain", "pipeline", "notifier", "api")
SEED_ENV = {
    "PROMETHEUS_METRICS_PORT",
    "SLACK_WEBHOOK_URL",
    "EMAIL_SMTP_HOST",
    "EMAIL_SMTP_PORT",
    "EMAIL_FROM",
    "EMAIL_TO",
    "SLOW_REQUEST_THRESHOLD",
    "RESOURCE_MONITORING_INTERVAL",
    "REDIS_URL",
    "DATABASE_URL",
    "RULES_DIR",
}
#: the Redis users of scripts/redis-users.sh, each with a password from .env
REDIS_USERS = ("ADMIN", "PRODUCER", "PIPELINE", "NOTIFIER", "API")
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|WEBHOOK|API_KEY", re.I)
#: what .env must give (compose refuses to start without them), with stand-in values
REQUIRED = {"POSTGRES_PASSWORD": "x", "PROMETHEUS_METRICS_BEARER_TOKEN": "0123456789abcdef" * 2}
#: the database roles of scripts/pg-roles.sql, each with a password from .env
PG_ROLES = ("PIPELINE", "NOTIFIER", "API")
REQUIRED.update(
    {f"POSTGRES_{role}_PASSWORD": f"{role.lower()}-0123456789abcdef" for role in PG_ROLES}
)
REQUIRED.update(
    {f"REDIS_{user}_PASSWORD": f"{user.lower()}-0123456789abcdef" for user in REDIS_USERS}
)
#: every port published on the host: the API on every interface, Grafana on loopback only
PUBLISHED = {"api": ["0.0.0.0:8000:8000"], "grafana": ["127.0.0.1:3000:3000"]}
METRICS_TOKEN = "/run/secrets/qesmon_metrics_token"
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            return value if value else (arg or "")
        if op in (":?", "?"):
            if not value:
                raise ValueError(f"{name}: {arg}")
            return value
        return value or ""

    return _REF.sub(replace, text.replace("$$", "\0")).replace("\0", "$")


def _env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(\S*)", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def test_every_service_has_an_image_or_a_build_that_exists() -> None:
    for name, service in _services().items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (
                service["build"]
                if isinstance(service["build"], str)
                else service["build"]["context"]
            )
            assert (ROOT / context / "Dockerfile").is_file(), name
    expected = {
        "redis", "timescaledb", "db-roles", "migrate", "maintain", "grafana-db-reader", "pipeline",
        "notifier", "api", "prometheus", "alertmanager", "grafana",
    }  # fmt: skip
    assert set(_services()) == expected
    assert _services()["timescaledb"]["image"].startswith("timescale/timescaledb:")


def test_every_mounted_file_exists_and_named_volumes_are_declared() -> None:
    declared = set(_compose()["volumes"])
    used: set[str] = set()
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), (name, volume)
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared
    assert _services()["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]


def test_dependencies_exist_and_migrations_run_before_the_processes() -> None:
    services = _services()
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("pipeline", "notifier", "api"):
        assert services[name]["command"] == [name]
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["timescaledb"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    grafana_deps = services["grafana"]["depends_on"]
    assert grafana_deps["grafana-db-reader"]["condition"] == "service_completed_successfully"
    for name in (
        "redis",
        "timescaledb",
        "pipeline",
        "api",
        "prometheus",
        "alertmanager",
        "grafana",
    ):
        assert services[name]["healthcheck"]["test"], name


def test_qesmon_environment_uses_the_settings_names_and_is_valid() -> None:
    known = {var for var, _ in ENV.values()} | {"PGPASSWORD"}
    env_example = _env_example()
    for name in QESMON_SERVICES:
        env = _services()[name]["environment"]
        assert set(env) <= known, f"{name}: unknown variables {set(env) - known}"
        assert set(env) >= SEED_ENV, f"{name}: missing {SEED_ENV - set(env)}"
        # With only the required secrets set, the values are what Settings accepts.
        resolved = {k: interpolate(str(v), REQUIRED) for k, v in env.items()}
        settings = Settings.from_env(resolved)
        assert settings.api.host == "0.0.0.0"
        # only the api holds the scrape token, and its exporter needs it on 0.0.0.0
        if name == "api":
            assert settings.api.metrics_host == "0.0.0.0"
            assert settings.api.metrics_bearer_token == REQUIRED["PROMETHEUS_METRICS_BEARER_TOKEN"]
            assert not settings.api.metrics_allow_anonymous
        else:
            assert "PROMETHEUS_METRICS_BEARER_TOKEN" not in env, name
            assert settings.api.metrics_host == "127.0.0.1", name
        assert (settings.api.port, settings.api.metrics_port) == (8000, 8001)
        assert urlhost(settings.redis_url) == "redis"
        assert urlhost(settings.database_url) == "timescaledb"
        assert str(settings.pipeline.recovery_dir) == "/var/lib/qesmon/recovery"
    text = COMPOSE.read_text()
    for match in _REF.finditer(text):
        assert match.group(1) in env_example, f"${{{match.group(1)}}} is not in .env.example"
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        interpolate(str(_services()["migrate"]["environment"]["PGPASSWORD"]), {})
    with pytest.raises(ValueError, match="POSTGRES_API_PASSWORD"):
        interpolate(str(_services()["api"]["environment"]["PGPASSWORD"]), {})


def urlhost(url: str) -> str:
    match = re.match(r"\w+://(?:[^@/]*@)?([^:/]+)", url)
    assert match, url
    return match.group(1)


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name, service in _services().items():
        env = service.get("environment", {})
        for key, value in env.items():
            if SECRET.search(key):
                match = _REF.fullmatch(str(value))
                assert match, f"{name}: {key} must come from the environment, not the file"
                assert not match.group(3) or match.group(2).endswith("?"), (
                    f"{name}: {key} has a default value"
                )
    for line in COMPOSE.read_text().splitlines():
        assert not re.search(r"://[^$\s/]*:[^$\s@]+@", line), f"credentials in a URL: {line}"


def _published(service: dict[str, Any]) -> list[str]:
    """A service's published ports as ``host_ip:host_port:container_port``."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # the long syntax
            ip, host, target = port.get("host_ip", "0.0.0.0"), port["published"], port["target"]
        else:
            parts = interpolate(str(port), {}).split(":")
            ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            host, target = parts[-2] if len(parts) > 1 else "", parts[-1]
        out.append(f"{ip}:{host}:{target}")
    return out


def test_only_the_api_is_published_and_grafana_on_the_hosts_loopback_only() -> None:
    published = {name: _published(s) for name, s in _services().items() if _published(s)}
    assert published == PUBLISHED
    for name, service in _services().items():
        # host networking would publish every port the service listens on
        assert service.get("network_mode") is None, name


def test_the_exporter_needs_a_token_prometheus_sends_from_a_secret() -> None:
    services = _services()
    api_env = services["api"]["environment"]
    reference = _REF.fullmatch(str(api_env["PROMETHEUS_METRICS_BEARER_TOKEN"]))
    assert reference and reference.group(2) == ":?", "the token must be required"
    resolved = {k: interpolate(str(v), REQUIRED) for k, v in api_env.items()}
    del resolved["PROMETHEUS_METRICS_BEARER_TOKEN"]
    with pytest.raises(ConfigError, match=re.escape("PROMETHEUS_METRICS_HOST '0.0.0.0' is not")):
        Settings.from_env(resolved)
    secret = _compose()["secrets"]["qesmon_metrics_token"]
    assert secret == {"environment": reference.group(1)}
    assert services["prometheus"]["secrets"] == ["qesmon_metrics_token"]
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "qes-monitoring")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": METRICS_TOKEN}


def test_prometheus_has_no_lifecycle_api_and_alertmanager_no_cluster_port() -> None:
    services = _services()
    prom_cmd = services["prometheus"]["command"]
    assert not [flag for flag in prom_cmd if flag.startswith(("--web.enable-", "--web.listen"))]
    am_cmd = services["alertmanager"]["command"]
    assert "--cluster.listen-address=" in am_cmd
    assert not [flag for flag in am_cmd if flag.startswith("--web.listen")]


def test_ports_match_the_settings_and_the_scrape_target() -> None:
    services = _services()
    defaults = Settings()
    assert _published(services["api"]) == [f"0.0.0.0:{defaults.api.port}:{defaults.api.port}"]
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "qes-monitoring")
    assert job["static_configs"][0]["targets"] == [f"api:{defaults.api.metrics_port}"]
    prom_cmd = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom_cmd
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    am_cmd = services["alertmanager"]["command"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am_cmd
    assert scrape["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_grafana_provisioning_points_at_the_compose_services() -> None:
    services = _services()
    sources = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )["datasources"]
    by_uid = {s["uid"]: s for s in sources}
    tsdb, prom = by_uid["timescaledb"], by_uid["prometheus"]
    assert tsdb["type"] == "grafana-postgresql-datasource"
    assert tsdb["jsonData"]["timescaledb"] is True
    assert tsdb["url"] == "timescaledb:5432"
    assert tsdb["jsonData"]["database"] == services["timescaledb"]["environment"]["POSTGRES_DB"]
    assert f"reader={tsdb['user']}" in services["grafana-db-reader"]["entrypoint"]
    assert tsdb["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"
    assert "GRAFANA_DB_PASSWORD" in services["grafana"]["environment"]
    assert prom["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "provider.yaml").read_text()
    )["providers"][0]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    relative = Path(home).relative_to(provider["options"]["path"])
    assert (ROOT / "grafana" / "dashboards" / relative).is_file()


def test_dockerfile_runs_qesmon_as_a_non_root_user_with_recovery_on_a_volume() -> None:
    lines = [
        line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()
    ]
    assert lines[[line.startswith("FROM") for line in lines].index(True)] == "FROM python:3.11-slim"
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    assert 'ENTRYPOINT ["qesmon"]' in lines
    assert 'VOLUME ["/var/lib/qesmon/recovery"]' in lines
    pipeline_mounts = dict(v.split(":")[:2] for v in _services()["pipeline"]["volumes"])
    assert pipeline_mounts["pipeline-recovery"] == "/var/lib/qesmon/recovery"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var", ".env"} <= set(ignored)
