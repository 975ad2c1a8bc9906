"""compose.yaml is valid for docker-compose and wires the cloud and edge services (no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("EESPEC_REQUIRE_COMPOSE") == "1":
            pytest.fail("docker-compose is not on PATH and EESPEC_REQUIRE_COMPOSE=1")
        pytest.skip("docker-compose is not on PATH (apt-get install docker-compose to check compose.yaml)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EESPEC_")}
    return subprocess.run(
        [exe, "-f", "compose.yaml", "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_config():
    result = compose_config(EESPEC_API_KEY="test-key")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("cloud:", "edge:", "healthcheck:", "/health", "service_healthy", "ws://cloud:8000"):
        assert needle in out, needle
    assert "EESPEC_API_KEY: test-key" in out
    assert "EESPEC_TARGET: smollm2-135m-instruct" in out
    assert "127.0.0.1:8000:8000" in out  # loopback unless EESPEC_BIND says otherwise


def test_compose_requires_an_api_key():
    result = compose_config()
    assert result.returncode != 0
    assert "EESPEC_API_KEY" in result.stderr


def test_the_image_gets_every_package():
    """The Dockerfile copies the whole context, and .dockerignore leaves out no installed package."""
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY . ." in dockerfile
    ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in include["include"]}
    assert packages and not packages & ignored, packages & ignored
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file(), package
