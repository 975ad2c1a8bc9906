"""The cloud server's dashboard: an open page shell, its figures behind the key, the page in headless
Chromium showing the sessions, rounds and early-exit hits of real speculative traffic."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from edge_client import DraftEngine, EdgeClient
from shared.tiny import tiny_llama, tiny_tokenizer
from tests.dashboard_helpers import CHROMEDRIVER, CHROMIUM, chromium, log_in, wait_for
from tests.helpers import twin
from tests.servers import running_server, tiny_loaded

try:
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - selenium comes with .[dev]
    By = None

KEY = "cloud-dashboard-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served():
    tok = tiny_tokenizer()
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4)
    model.generation_config.eos_token_id = 2
    with running_server(tiny_loaded(model, tok, exits=(1, 3)), api_key=[KEY]) as url:
        yield url, model, tok


def speculate(url: str, model, tok, rounds_of: int = 24) -> None:
    async def run():
        async with EdgeClient(url, DraftEngine(twin(model)), tokenizer=tok, api_key=KEY, window=3) as client:
            await client.generate(tok("abc").input_ids, max_tokens=rounds_of)

    asyncio.run(run())


def test_the_shell_is_open_and_the_figures_need_the_key(served):
    url, model, tok = served
    for path in ("/", "/dashboard/cloud.js", "/assets/common.js", "/assets/dashboard.css"):
        assert httpx.get(url + path).status_code == 200, path
    assert httpx.get(url + "/v1/dashboard").status_code == 401
    assert httpx.post(url + "/", json={}).status_code in (401, 405)  # only GET of the shell is open
    speculate(url, model, tok)
    figures = httpx.get(url + "/v1/dashboard", headers=AUTH).json()
    metrics = figures["metrics"]
    assert figures["exit_layers"] == [1, 3]
    assert metrics["eespec_rounds_total"] > 0
    assert metrics["eespec_accepted_tokens_total"] <= metrics["eespec_draft_tokens_total"]
    assert set(metrics["eespec_early_predictions_total"]) == {"1", "3"}
    # The same numbers as /metrics.
    text = httpx.get(url + "/metrics", headers=AUTH).text
    assert f"eespec_rounds_total {metrics['eespec_rounds_total']}" in text


@pytest.mark.skipif(
    By is None or not (CHROMIUM and CHROMEDRIVER), reason="needs selenium, chromium and chromium-driver"
)
def test_the_page_shows_live_figures_with_the_key_only(served):
    url, model, tok = served
    with chromium() as driver:
        log_in(driver, url, "not-the-key")
        wait_for(lambda: driver.find_element(By.ID, "login-error").text == "wrong API key", what="refusal")
        assert not driver.find_element(By.ID, "app").is_displayed()
        log_in(driver, url, KEY)
        wait_for(lambda: driver.find_element(By.ID, "app").is_displayed(), what="the dashboard")
        assert KEY not in driver.current_url
        before = int(float(wait_for(lambda: driver.find_element(By.ID, "rounds").text, what="rounds")))
        speculate(url, model, tok)
        wait_for(
            lambda: int(float(driver.find_element(By.ID, "rounds").text)) > before, what="rounds to grow"
        )
        exits = wait_for(lambda: driver.find_element(By.ID, "exits").text, what="the exits table")
        assert "after layer 1" in exits and "after layer 3" in exits
        assert driver.find_element(By.ID, "active").text in ("0", "1")
        assert "loading" not in driver.find_element(By.ID, "model").text
