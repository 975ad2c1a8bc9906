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
