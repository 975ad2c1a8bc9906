"""Protocol 1 over real websockets on loopback: exactness, early frames, errors, concurrency."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from edge_client.client import EdgeClient, EdgeError
from edge_client.draft import DraftEngine
from shared.hashing import ids_hash
from shared.tiny import tiny_llama, tiny_tokenizer
from tests.conftest import DEVICE
from tests.helpers import oracle_greedy, twin
from tests.servers import running_server, tiny_loaded

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def target(tok):
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4).to(DEVICE)
    model.generation_config.eos_token_id = 2
    return model


@pytest.fixture(scope="module")
def server(target, tok):
    with running_server(
        tiny_loaded(target, tok), api_key=[KEY], max_prompt_tokens=64, max_frame_bytes=4096
    ) as url:
        yield url


@pytest.fixture(scope="module")
def ws_url(server):
    return server.replace("http://", "ws://") + "/v1/speculate"


PROMPTS = ["Hello there", "def f(x):", "The robot walks", "a"]


def run(coro):
    return asyncio.run(coro)


async def generate(url, engine, tok, prompt_ids, max_tokens=30, **kwargs):
    async with EdgeClient(url, engine, tokenizer=tok, api_key=KEY, **kwargs) as client:
        return await client.generate(prompt_ids, max_tokens=max_tokens)


@pytest.mark.parametrize("preempt", [True, False])
@pytest.mark.parametrize("window", [1, 4])
def test_greedy_over_websockets_equals_generate(server, target, tok, preempt, window):
    for engine in (
        DraftEngine(twin(target)),
        DraftEngine(tiny_llama(1, vocab_size=99, hidden_size=32, layers=1)),
    ):
        for prompt in PROMPTS:
            ids = tok(prompt).input_ids
            result = run(generate(server, engine, tok, ids, window=window, preempt=preempt))
            assert result.token_ids == oracle_greedy(target, ids, 30, eos=2), prompt


def test_eight_concurrent_sessions_get_their_own_output(server, target, tok):
    prompts = [f"prompt {i}: " + "xyz"[: i % 3] for i in range(8)]

    async def many():
        engines = [
            DraftEngine(twin(target)) if i % 2 else DraftEngine(tiny_llama(1, vocab_size=99, layers=1))
            for i in range(8)
        ]
        return await asyncio.gather(
            *(generate(server, e, tok, tok(p).input_ids, 25) for e, p in zip(engines, prompts, strict=False))
        )

    results = run(many())
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == oracle_greedy(target, tok(prompt).input_ids, 25, eos=2), prompt


def _handshake(ws):
    ws.send(json.dumps({"type": "hello", "protocol": 1}))
    return json.loads(ws.recv())


def _errors_then_ok(ws, frame, code):
    ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    reply = json.loads(ws.recv())
    assert reply["type"] == "error" and reply["code"] == code, reply
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv())["type"] == "pong"
    return reply


def test_error_frames_have_stable_codes_and_the_server_keeps_serving(ws_url, tok):
    with connect(ws_url, additional_headers=AUTH) as ws:
        _errors_then_ok(ws, {"type": "start", "token_ids": [5]}, "bad_frame")  # before hello
        welcome = _handshake(ws)
        assert welcome["type"] == "welcome" and welcome["exit_layers"] == [1, 3]
        assert welcome["limits"]["max_prompt_tokens"] == 64
        _errors_then_ok(ws, "{not json", "bad_frame")
        _errors_then_ok(ws, "[1, 2]", "bad_frame")
        _errors_then_ok(ws, {"type": "teleport"}, "unknown_type")
        _errors_then_ok(ws, {"type": "start", "token_ids": list(range(10, 80))}, "too_large")  # > 64
        _errors_then_ok(ws, {"type": "x" * 5000}, "too_large")  # frame > 4096 bytes
        _errors_then_ok(ws, {"type": "start", "token_ids": [5, 999]}, "bad_frame")  # outside the vocab
        _errors_then_ok(
            ws, {"type": "draft", "round": 1, "pos": 3, "tokens": [5]}, "bad_round"
        )  # no generation
        ws.send(json.dumps({"type": "start", "token_ids": tok("Hi").input_ids, "max_tokens": 20}))
        started = json.loads(ws.recv())
        assert started["type"] == "started" and started["prompt_hash"] == ids_hash(tok("Hi").input_ids)
        pos = started["prompt_tokens"] + 1
        reply = _errors_then_ok(ws, {"type": "draft", "round": 2, "pos": pos, "tokens": [5]}, "bad_round")
        assert reply["round"] == 2
        _errors_then_ok(ws, {"type": "draft", "round": 1, "pos": pos + 1, "tokens": [5]}, "bad_position")
        _errors_then_ok(ws, {"type": "draft", "round": 1, "pos": pos, "tokens": [5] * 17}, "too_large")
        _errors_then_ok(ws, {"type": "draft", "round": 1, "pos": pos, "tokens": []}, "bad_frame")
        # The generation is intact after all that: round 1 at the right position works.
        ws.send(json.dumps({"type": "draft", "round": 1, "pos": pos, "tokens": [5, 6]}))
        frames = []
        while not frames or frames[-1]["type"] != "verdict":
            frames.append(json.loads(ws.recv()))
        assert [f["type"] for f in frames] == ["early", "early", "verdict"]
        ws.send(json.dumps({"type": "cancel"}))
        assert json.loads(ws.recv())["type"] == "cancelled"


def test_vocab_mismatch_and_wrong_protocol(ws_url):
    with connect(ws_url, additional_headers=AUTH) as ws:
        _errors_then_ok(ws, {"type": "hello", "protocol": 1, "vocab_hash": "0" * 16}, "vocab_mismatch")
        _errors_then_ok(ws, {"type": "hello", "protocol": 2}, "bad_frame")
        _errors_then_ok(ws, {"type": "hello", "protocol": 1, "exits": [2]}, "bad_frame")  # exit not served
        assert _handshake(ws)["type"] == "welcome"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_upgrade_without_a_valid_key_is_refused_with_403(ws_url, server, headers):
    with pytest.raises(InvalidStatus) as info, connect(ws_url, additional_headers=headers):
        pass
    assert info.value.response.status_code == 403
    assert httpx.get(server + "/health").status_code == 200


def _gauges(server):
    text = httpx.get(server + "/metrics", headers=AUTH).text
    values = {}
    for line in text.splitlines():
        if line.startswith(
            ("eespec_active_sessions ", "eespec_kv_cache_bytes ", "eespec_detached_sessions ")
        ):
            name, value = line.split()
            values[name] = float(value)
    return values


def test_client_vanishing_mid_round_frees_its_cache(ws_url, server, tok):
    with connect(ws_url, additional_headers=AUTH) as ws:
        _handshake(ws)
        ws.send(json.dumps({"type": "start", "token_ids": tok("Hello there").input_ids, "max_tokens": 50}))
        started = json.loads(ws.recv())
        during = _gauges(server)
        assert during["eespec_active_sessions"] >= 1 and during["eespec_kv_cache_bytes"] > 0
        draft = {"type": "draft", "round": 1, "pos": started["prompt_tokens"] + 1, "tokens": [5, 6, 7]}
        ws.send(json.dumps(draft))
    # Gone with a draft in flight.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = _gauges(server)
        if after["eespec_active_sessions"] == 0 and after["eespec_kv_cache_bytes"] == 0:
            break
        time.sleep(0.05)
    assert after["eespec_active_sessions"] == 0 and after["eespec_kv_cache_bytes"] == 0
    assert after["eespec_detached_sessions"] >= 1
    # And the server still serves.
    with connect(ws_url, additional_headers=AUTH) as again:
        assert _handshake(again)["type"] == "welcome"


def test_early_frames_leave_before_the_forward_ends(tok):
    """A slowed last layer: the early frame reaches the client long before the verdict does."""
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4)
    slow_s = 0.4
    model.model.layers[-1].register_forward_pre_hook(
        lambda _m, _i: time.sleep(slow_s) if _i[0].shape[1] > 1 else None
    )
    with running_server(tiny_loaded(model, tok, exits=(2,)), api_key=[KEY]) as url:
        ws_url = url.replace("http://", "ws://") + "/v1/speculate"
        with connect(ws_url, additional_headers=AUTH) as ws:
            _handshake(ws)
            ws.send(json.dumps({"type": "start", "token_ids": [40, 41], "max_tokens": 10}))
            started = json.loads(ws.recv())
            ws.send(
                json.dumps(
                    {"type": "draft", "round": 1, "pos": started["prompt_tokens"] + 1, "tokens": [5, 6]}
                )
            )
            arrivals = []
            while not arrivals or arrivals[-1][0]["type"] != "verdict":
                frame = json.loads(ws.recv())
                arrivals.append((frame, time.perf_counter()))
    (early, t_early), (verdict, t_verdict) = arrivals
    assert early["type"] == "early" and early["layer"] == 2
    assert early["t_ms"] < verdict["verify_ms"] - slow_s * 1000 * 0.8
    assert t_verdict - t_early > slow_s * 0.8


def test_sampling_through_the_server_matches_the_target(tok):
    """The engine's chi-square test, with every round crossing the websocket (one setting, N=1500)."""
    from tests import test_sampling_exact as stat

    target, draft = stat.models.__wrapped__()
    params = stat.SETTINGS[0]
    loaded = tiny_loaded(target, tok, exits=(1,))
    loaded.eos_ids = []  # the 8-token model has no EOS; the character tokenizer's id 2 must not act as one
    counts = np.zeros((stat.VOCAB, stat.VOCAB))
    n = 1500

    async def sample(url):
        async with EdgeClient(url, DraftEngine(draft), api_key=KEY, window=2) as client:
            for seed in range(n):
                result = await client.generate(
                    stat.PROMPT, max_tokens=4, sampling=params.model_copy(update={"seed": seed})
                )
                counts[result.token_ids[2], result.token_ids[3]] += 1

    with running_server(loaded, api_key=[KEY]) as url:
        run(sample(url))
    p_value, df = stat.chi_square(counts, stat.exact_joint(target, params))
    assert p_value > stat.ALPHA, f"p={p_value:.2e} df={df}"
    assert stat.detectable_distance(df, n) <= 0.05


def test_edge_error_is_raised_for_server_errors(server, target, tok):
    async def too_long():
        async with EdgeClient(server, DraftEngine(twin(target)), tokenizer=tok, api_key=KEY) as client:
            await client.generate(list(range(10, 90)), max_tokens=5)

    with pytest.raises(EdgeError) as info:
        run(too_long())
    assert info.value.code == "too_large"


def test_upgrade_while_loading_is_503_then_works(target, tok):
    """A server still loading answers the upgrade with 503 (retry), never 403 (give up)."""
    import threading

    import uvicorn

    from cloud_server.app import create_app
    from cloud_server.settings import ServerSettings
    from tests.servers import free_port

    release = threading.Event()

    def slow_loader(_settings):
        release.wait(30)
        return tiny_loaded(target, tok)

    port = free_port()
    app = create_app(ServerSettings(port=port, api_key=[KEY]), loader=slow_loader)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        url = f"ws://127.0.0.1:{port}/v1/speculate"
        with pytest.raises(InvalidStatus) as info, connect(url, additional_headers=AUTH):
            pass
        assert info.value.response.status_code == 503
        release.set()
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{port}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with connect(url, additional_headers=AUTH) as ws:
            assert _handshake(ws)["type"] == "welcome"
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)
