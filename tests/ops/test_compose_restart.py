"""docker-compose.yml: every long-running service comes back after a crash, one-shot jobs do
not run again (pure: reads the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).parents[2] / "docker-compose.yml"
ONE_SHOT = {"db-roles", "migrate", "grafana-db-reader"}


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]
    return services


def test_every_long_running_service_restarts_unless_stopped_and_one_shot_jobs_never() -> None:
    services = _services()
    assert set(services) >= ONE_SHOT
    for name, service in services.items():
        want = "no" if name in ONE_SHOT else "unless-stopped"
        assert service.get("restart") == want, (name, service.get("restart"))


def test_redis_bounds_the_size_of_a_single_field() -> None:
    command = _services()["redis"]["command"]
    assert command[command.index("--proto-max-bulk-len") + 1] == "16mb"
