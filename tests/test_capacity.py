"""Capacity on one server: concurrent sessions batched by the scheduler, admission, and the load signal."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from cloud_server.engine.scheduler import Scheduler
from cloud_server.settings import ServerSettings
from cloud_server.state import ServerState, SlotsFull
from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from edge_client.window import AdaptiveWindow
from shared.attention import ROWWISE_ATTENTION
from shared.tiny import tiny_llama, tiny_tokenizer
from tests.helpers import oracle_greedy, twin
from tests.servers import running_server, tiny_loaded

KEY = "capacity-key"


@pytest.fixture(scope="module")
def served():
    tok = tiny_tokenizer()
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4)
    model.set_attn_implementation(ROWWISE_ATTENTION)
    draft = tiny_llama(5, vocab_size=99, hidden_size=32, layers=1)
    with running_server(tiny_loaded(model, tok, exits=(1, 3)), api_key=[KEY]) as url:
        yield url, model, draft, tok


def test_concurrent_edges_and_openai_requests_are_batched_and_exact(served, monkeypatch):
    url, model, draft, tok = served
    sizes: list[int] = []
    run_batch = Scheduler._run_batch

    def recording(self, batch, load):
        sizes.append(len(batch))
        return run_batch(self, batch, load)

    monkeypatch.setattr(Scheduler, "_run_batch", recording)
    prompts = [tok(text).input_ids for text in ("def f(x):", "hello there", "ab", "robot, go", "x = 1", "qq")]
    windows = [1, 2, 3, 4, 5, 3]
    max_tokens = 20

    async def edge(prompt, window):
        engine = DraftEngine(twin(draft))
        async with EdgeClient(url, engine, tokenizer=tok, api_key=KEY, window=window) as client:
            return (await client.generate(prompt, max_tokens=max_tokens)).token_ids

    async def openai(prompt):
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        async with httpx.AsyncClient(timeout=120) as http:
            response = await http.post(
                url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
            )
        response.raise_for_status()
        return response.json()["choices"][0]["text"]

    async def run():
        edges = [edge(p, w) for p, w in zip(prompts, windows, strict=True)]
        return await asyncio.gather(*edges, openai(prompts[0]), openai(prompts[1]))

    *outputs, text0, text1 = asyncio.run(run())
    for prompt, output in zip(prompts, outputs, strict=True):
        assert output == oracle_greedy(model, prompt, max_tokens)
    for prompt, text in ((prompts[0], text0), (prompts[1], text1)):
        assert text == tok.decode(oracle_greedy(model, prompt, max_tokens))
    assert max(sizes) >= 3, f"the sessions never shared a forward: {sorted(sizes)[-5:]}"


def test_admission_refuses_new_sessions_while_the_queue_waits_too_long():
    state = ServerState(ServerSettings(max_queue_delay_s=0.05))
    gate = threading.Event()
    try:
        state.worker.scheduler.submit_call(gate.wait)  # the model thread is busy...
        state.worker.scheduler.submit_call(lambda: None)  # ...and a job waits behind it
        slot = state.acquire_slot("a")  # not waited long yet
        time.sleep(0.1)
        with pytest.raises(SlotsFull) as info:
            state.acquire_slot("b")
        assert info.value.code == "limit_exceeded" and info.value.retryable
        gate.set()
        deadline = time.monotonic() + 10
        while state.worker.queue_delay_s > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        state.acquire_slot("b").release()  # the queue drained: admitted again
        slot.release()
    finally:
        gate.set()
        state.worker.shutdown()


def test_the_adaptive_window_shrinks_under_server_load():
    windows = AdaptiveWindow(max_window=8)
    for _ in range(10):  # high acceptance, slow drafting relative to verification: a long window pays
        windows.observe(8, 8, 0.002, 0.02, 0.05)
    assert windows.choose().k == 8
    for _ in range(20):
        windows.observe(8, 8, 0.002, 0.02, 0.05, server_load=4.0)
    choice = windows.choose()
    assert choice.k == 2 and "server load" in choice.reason
    for _ in range(20):
        windows.observe(2, 2, 0.002, 0.02, 0.05, server_load=0.5)
    assert windows.choose().k == 8


def test_the_capacity_report_counts_clients_served_at_the_slo(tmp_path):
    from eespec.bench.capacity import client_figures, markdown, plot, served_at_slo

    runs = [{"latency_s": 1.0, "tokens": 10}] * 19 + [{"latency_s": 3.0, "tokens": 10}]
    figures = client_figures(runs)
    assert figures["p50_ms_per_token"] == 100.0 and 100.0 < figures["p95_ms_per_token"] <= 300.0
    rows = [
        {"server": "batched", "clients": n, "p95_ms_per_token": p95, "p50_ms_per_token": p95,
         "aggregate_tokens_per_s": n * 10.0, "cloud_busy_s_per_token": 0.05, "diverged": 0}
        for n, p95 in ((1, 100.0), (2, 120.0), (4, 150.0), (8, 151.0), (16, 140.0))
    ]  # fmt: skip
    assert served_at_slo(rows, 1.5) == 4  # 8 is just above the bound: 16 within it does not count
    assert served_at_slo(rows[1:], 1.5) is None
    report = {
        "started": "now", "command": "eespec capacity", "machine": "m", "load_before": (1.0, 1.0, 1.0),
        "load_after": (2.0, 2.0, 2.0), "config": {"slo": 1.5, "servers": {"batched": 32}}, "rows": rows,
        "summary": {"batched": {"served_at_slo": 16}},
    }  # fmt: skip
    assert "| batched | 8 | 80.0 |" in markdown(report)
    plot(report, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_busy_seconds_behind_a_proxy_are_summed_over_every_replica():
    """`eespec capacity --ray-replicas`: each /metrics scrape reaches one replica; the cost figure is the sum
    of every replica's busy seconds, each counted once, told apart by `eespec_server_info{server_id}`."""
    from cloud_server.prometheus_metrics import ServerMetrics
    from eespec.bench.modes import scrape_busy_s

    replicas = []
    for server_id, busy in (("101-a", 1.5), ("102-b", 2.25)):
        metrics = ServerMetrics()
        metrics.server_info.labels(server_id=server_id).set(1)
        metrics.busy_seconds.inc(busy)
        replicas.append(metrics.render())
    answered = []

    def route(request: httpx.Request) -> httpx.Response:
        # The proxy keeps picking the first replica for a while, then the second.
        index = 0 if len(answered) < 3 else 1
        answered.append(index)
        return httpx.Response(200, content=replicas[index])

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(route)) as http:
            return (
                await scrape_busy_s(http, "http://proxy", KEY, replicas=2),
                await scrape_busy_s(http, "http://proxy", KEY),
            )

    both, one = asyncio.run(main())
    assert both == 3.75 and answered[:4] == [0, 0, 0, 1]
    assert one == 2.25  # one replica: the first answer

    async def never_the_second():
        transport = httpx.MockTransport(lambda _: httpx.Response(200, content=replicas[0]))
        async with httpx.AsyncClient(transport=transport) as http:
            await scrape_busy_s(http, "http://proxy", KEY, replicas=2)

    with pytest.raises(RuntimeError, match="1 of 2 replicas"):
        asyncio.run(never_the_second())
