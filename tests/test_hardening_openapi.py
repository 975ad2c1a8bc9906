"""Schema-driven fuzzing of the HTTP routes (issue 12): schemathesis generates requests from the server's
own OpenAPI schema (valid and invalid bodies) and sends them over real HTTP on loopback. No request may
answer 5xx; every error is the OpenAI-shaped JSON with a stable code; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from shared.tiny import tiny_llama, tiny_tokenizer
from tests.servers import running_server, tiny_loaded

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STABLE_CODES = {"bad_frame", "too_large", "limit_exceeded", "unauthorized", "shutting_down"}
STABLE_CODES |= {"bad_grammar", "bad_image", "not_found", "method_not_allowed"}


@pytest.fixture(scope="module")
def server():
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=2)
    loaded = tiny_loaded(model, tiny_tokenizer(), exits=(1,))
    with running_server(
        loaded, api_key=[KEY], max_tokens=8, max_prompt_tokens=64, max_body_bytes=16384
    ) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server + "/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


def check(case, server) -> None:
    response = case.call(base_url=server, headers=AUTH, timeout=30)
    assert response.status_code < 500, (case.as_curl_command(), response.text[:300])
    if response.status_code >= 400:
        error = response.json().get("error") or {}
        assert error, (case.as_curl_command(), response.status_code, response.text[:300])
        assert error["code"] in STABLE_CODES and error["message"], response.text[:300]
        assert "Traceback" not in response.text


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_generated_requests_never_get_a_server_error(case, server):
    check(case, server)
    assert httpx.get(server + "/health").status_code == 200


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_many_generated_requests_never_get_a_server_error(case, server):
    check(case, server)
