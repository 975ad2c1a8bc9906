"""Server settings from the environment: one key, comma-separated keys or a JSON list."""

from __future__ import annotations

import pytest

from cloud_server.settings import ServerSettings


@pytest.mark.parametrize(
    ("raw", "keys"),
    [("secret", ["secret"]), ("k1,k2", ["k1", "k2"]), ('["k1", "k2"]', ["k1", "k2"]), ("", [])],
)
def test_api_keys_from_env(monkeypatch, raw, keys):
    monkeypatch.setenv("EESPEC_API_KEY", raw)
    assert ServerSettings().api_key == keys


@pytest.mark.parametrize(("raw", "layers"), [("10,20", [10, 20]), ("[8, 15, 24]", [8, 15, 24]), ("12", [12])])
def test_exit_layers_from_env(monkeypatch, raw, layers):
    monkeypatch.setenv("EESPEC_EXIT_LAYERS", raw)
    assert ServerSettings().exit_layers == layers


def test_limits_follow_settings():
    limits = ServerSettings(max_window=8, ttl_s=5).limits()
    assert limits.max_window == 8 and limits.ttl_s == 5


def test_per_key_limit_defaults_to_an_equal_share_of_the_slots():
    """One key (one tenant) may use every slot; with several keys none can take another's share."""
    assert ServerSettings(max_sessions=64, api_key=["a"]).per_key_limit == 64
    assert ServerSettings(max_sessions=64).per_key_limit == 64  # --insecure-no-auth: one anonymous tenant
    assert ServerSettings(max_sessions=64, api_key=["a", "b", "c"]).per_key_limit == 21
    assert ServerSettings(max_sessions=2, api_key=["a", "b", "c"]).per_key_limit == 1
    assert ServerSettings(max_sessions=64, api_key=["a", "b"], max_sessions_per_key=40).per_key_limit == 40
