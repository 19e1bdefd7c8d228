"""examples/docker-compose.yml: Redis Stack, the API and the worker; the master key from the shell.

The file is checked as YAML everywhere, and with ``docker compose config`` (or the older
``docker-compose config``) where a Compose client is installed; no Docker engine is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COMPOSE = EXAMPLES / "docker-compose.yml"
APP_SERVICES = ("sre-agent", "sre-worker")
KEY = "REDIS_SRE_MASTER_KEY"
FAKE_KEY = "Q29tcG9zZS1jb25maWctY2hlY2stb25seS0zMmJ5dGU="  # tests only


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (Compose accepts a list of NAME=value, or a mapping)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_redis_stack_the_api_and_the_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", *APP_SERVICES}
    assert services["redis"]["image"].startswith("redis/redis-stack-server:")
    assert "healthcheck" in services["redis"]
    assert "fastapi_app:app" in services["sre-agent"]["command"]
    assert "worker.py" in services["sre-worker"]["command"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert environment(service)["REDIS_OM_URL"] == "redis://redis:6379"
        build = service["build"]
        dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile == EXAMPLES / "Dockerfile"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_master_key_is_passed_through_from_the_shell(
    compose: dict[str, Any], name: str
) -> None:
    env = environment(compose["services"][name])
    # ${REDIS_SRE_MASTER_KEY} as in the design note; ":?message" makes Compose refuse to start
    # without it instead of starting services that cannot decrypt anything.
    assert re.fullmatch(r"\$\{REDIS_SRE_MASTER_KEY(:\?[^}]+)?\}", env[KEY])
    assert re.fullmatch(
        r"\$\{REDIS_SRE_PREVIOUS_MASTER_KEYS:-\}", env["REDIS_SRE_PREVIOUS_MASTER_KEYS"]
    )


def test_no_key_is_written_in_the_example_files() -> None:
    base64_key = re.compile(r"[A-Za-z0-9+/]{43}=")
    for path in (COMPOSE, EXAMPLES / "Dockerfile", EXAMPLES / "Dockerfile.dockerignore"):
        assert not base64_key.search(path.read_text()), path


def test_the_image_gets_what_the_services_run() -> None:
    dockerfile = (EXAMPLES / "Dockerfile").read_text()
    root = EXAMPLES.parent
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE)
    sources = [src for line in copied for src in line.split()]
    assert {"examples/fastapi_app.py", "examples/worker.py"} <= set(sources)
    for src in sources:
        assert (root / src).exists(), src
    assert "'.[examples]'" in dockerfile
    ignored = (EXAMPLES / "Dockerfile.dockerignore").read_text().splitlines()
    for src in sources:
        assert f"!{src}" in ignored, src  # the context sends it


# --- with a Compose client ------------------------------------------------------------------------


def compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin) if it works, else ``docker-compose`` (v1), else None."""
    if shutil.which("docker"):
        try:
            probe = subprocess.run(
                ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


CLIENT = compose_client()
needs_client = pytest.mark.skipif(CLIENT is None, reason="no Docker Compose client installed")


def run_config(key: str | None) -> subprocess.CompletedProcess[str]:
    assert CLIENT is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_SRE_", "COMPOSE_"))}
    if key is not None:
        env[KEY] = key
    return subprocess.run(
        [*CLIENT, "-f", str(COMPOSE), "config"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_client
def test_compose_config_resolves_the_key_from_the_shell_for_both_services() -> None:
    result = run_config(FAKE_KEY)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    for name in APP_SERVICES:
        env = environment(resolved[name])
        assert env[KEY] == FAKE_KEY
        assert env["REDIS_SRE_PREVIOUS_MASTER_KEYS"] == ""
    assert KEY not in environment(resolved["redis"])


@needs_client
def test_compose_config_refuses_to_run_without_the_key() -> None:
    result = run_config(None)
    assert result.returncode != 0
    assert KEY in result.stderr
