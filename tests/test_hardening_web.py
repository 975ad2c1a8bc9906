"""The serving stack under misuse (issue 12): secure defaults, bounded inputs and slots, errors that
never leak or mislead, and edge clients that recover honestly. Real uvicorn servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from cloud_server.app import InsecureConfig, create_app
from cloud_server.engine import InferenceWorker
from cloud_server.settings import ServerSettings
from edge_client.client import EdgeClient, EdgeError, restart_seed
from edge_client.draft import DraftEngine
from shared.sampling import SamplingParams
from shared.tiny import tiny_llama, tiny_tokenizer
from tests.helpers import oracle_greedy, twin
from tests.servers import running_server, tiny_loaded

KEY, OTHER = "key-a", "key-b"
AUTH = {"Authorization": f"Bearer {KEY}"}
EOS = 2


class Fault:
    """Raises inside decoder layer 2 of the served model while `armed` > 0, for windows of `min_len`+
    tokens (so prefills of short prompts and one-token steps are spared when asked)."""

    def __init__(self, model, min_len: int = 1) -> None:
        self.armed = 0
        self.slow_s = 0.0
        self.min_len = min_len
        model.model.layers[2].register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output) -> None:
        if self.slow_s:
            time.sleep(self.slow_s)
        if self.armed and inputs[0].shape[1] >= self.min_len:
            self.armed -= 1
            raise RuntimeError("injected fault at /srv/secret/model.py")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4)
    model.generation_config.eos_token_id = EOS
    return model


@pytest.fixture(scope="module")
def served(target):
    return twin(target)


@pytest.fixture(scope="module")
def fault(served):
    return Fault(served, min_len=2)


@pytest.fixture(scope="module")
def server(served, tok, fault):
    settings = dict(
        api_key=[KEY, OTHER],
        max_sessions=6,
        max_sessions_per_key=4,
        max_detached=3,
        max_prompt_tokens=64,
        max_frame_bytes=8192,
        max_body_bytes=4096,
        hello_timeout_s=1.0,
        idle_timeout_s=2.0,
        header_timeout_s=1.0,
        allowed_origins=["https://ok.example"],
    )
    with running_server(tiny_loaded(served, tok), **settings) as url:
        yield url


@pytest.fixture(scope="module")
def ws_url(server):
    return server.replace("http://", "ws://") + "/v1/speculate"


def gauges(server) -> dict[str, float]:
    values = {}
    for line in httpx.get(server + "/metrics", headers=AUTH).text.splitlines():
        if line.startswith("eespec_") and " " in line and "{" not in line:
            name, value = line.split()
            values[name] = float(value)
    return values


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def hello(ws) -> dict:
    ws.send(json.dumps({"type": "hello", "protocol": 1}))
    return json.loads(ws.recv())


def reply_to(ws, frame) -> dict:
    ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    return json.loads(ws.recv())


# -- defect 3: secure by default ---------------------------------------------------------------------------


def test_no_key_refuses_to_start_unless_insecure_is_asked_for(caplog):
    with pytest.raises(InsecureConfig):
        create_app(ServerSettings())
    with caplog.at_level(logging.WARNING, logger="eespec.server"):
        create_app(ServerSettings(insecure_no_auth=True))
    assert "INSECURE" in caplog.text


def test_eespec_serve_without_a_key_exits_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EESPEC_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "eespec", "serve", "--target", "nowhere", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--insecure-no-auth" in result.stderr


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive_on_http_and_websocket(server, ws_url, scheme):
    headers = {"Authorization": f"{scheme} {KEY}"}
    assert httpx.get(server + "/v1/models", headers=headers).status_code == 200
    with connect(ws_url, additional_headers=headers) as ws:
        assert hello(ws)["type"] == "welcome"


def test_one_header_rule_two_authorization_headers_are_refused_everywhere(server, ws_url):
    both = [("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer wrong")]
    for pair in (both, both[::-1]):
        r = httpx.get(server + "/v1/models", headers=httpx.Headers(pair))
        assert r.status_code == 401
        with pytest.raises(InvalidStatus) as info, connect(ws_url, additional_headers=pair):
            pass
        assert info.value.response.status_code == 403


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/metrics", "/v1/models"])
def test_every_route_but_health_needs_the_key(server, path):
    assert httpx.get(server + path).status_code == 401
    assert httpx.get(server + path, headers=AUTH).status_code == 200


def test_a_browser_origin_is_refused_unless_allowed(server, ws_url):
    evil = {**AUTH, "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as info, connect(ws_url, additional_headers=evil):
        pass
    assert info.value.response.status_code == 403
    assert httpx.get(server + "/v1/models", headers=evil).status_code == 403
    ok = {**AUTH, "Origin": "https://ok.example"}
    with connect(ws_url, additional_headers=ok) as ws:
        assert hello(ws)["type"] == "welcome"


def test_insecure_mode_still_checks_origin(served, tok):
    with running_server(tiny_loaded(served, tok), insecure_no_auth=True) as url:
        assert httpx.get(url + "/v1/models").status_code == 200
        assert httpx.get(url + "/v1/models", headers={"Origin": "http://localhost:1234"}).status_code == 403
        ws = url.replace("http://", "ws://") + "/v1/speculate"
        with pytest.raises(InvalidStatus), connect(ws, additional_headers={"Origin": "http://x.example"}):
            pass


# -- defects 8, 14, 15: bounded inputs, client mistakes are the client's, errors never leak ----------------


def test_health_never_publishes_the_load_error(tok):
    def broken_loader(_settings):
        raise FileNotFoundError("/home/alice/secret/model.safetensors")

    from fastapi.testclient import TestClient

    with TestClient(create_app(ServerSettings(api_key=[KEY]), loader=broken_loader)) as http:
        assert wait_for(lambda: http.get("/health").json()["status"] == "failed")
        r = http.get("/health")
        assert r.status_code == 503 and "secret" not in r.text
        r = http.post("/v1/completions", json={"prompt": "x"}, headers=AUTH)
        assert r.status_code == 503 and "secret" not in r.text


def test_a_big_body_is_413_before_it_is_read(server):
    r = httpx.post(server + "/v1/completions", content=b"x" * 10_000, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    def chunks():
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(server + "/v1/completions", content=chunks(), headers=AUTH)  # chunked: no length
    assert r.status_code == 413
    # a lying Content-Length is refused up front, without waiting for the bytes
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
            b"Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
        )
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_unfinished_headers_are_closed_after_the_header_timeout(server):
    port = int(server.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    t0 = time.monotonic()
    for sock in sockets:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        sock.settimeout(10)
    for sock in sockets:
        assert sock.recv(100) == b""  # closed by the server
        sock.close()
    assert time.monotonic() - t0 < 5
    assert httpx.get(server + "/health").status_code == 200


BAD_HTTP_BODIES = [
    b"[" * 100_000 + b"]" * 100_000,  # over the body limit: 413
    b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"prompt": "a\\ud800b"}',
    b'{"prompt": "x", "temperature": 1e-307}',
    b'{"prompt": "x", "temperature": NaN}',
    b'{"prompt": "x", "stop": ["' + b"s" * 300 + b'"]}',
    b'{"prompt": "x", "stop": ' + json.dumps(["s"] * 40).encode() + b"}",
]


@pytest.mark.parametrize("body", BAD_HTTP_BODIES, ids=lambda b: b[:30].decode(errors="replace"))
def test_client_mistakes_on_http_are_4xx_json_never_500(server, body):
    r = httpx.post(
        server + "/v1/completions", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code in (400, 413), r.text
    error = r.json()["error"]
    assert error["code"] in ("bad_frame", "too_large") and "Traceback" not in r.text


def test_chat_mistakes_are_400(server):
    for body in ({"messages": []}, {"messages": [{"role": "user", "content": "a\ud800"}]}):
        r = httpx.post(
            server + "/v1/chat/completions",
            content=json.dumps(body).encode(),
            headers={**AUTH, "content-type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_frame"


BAD_FRAMES = [
    "[" * 100_000 + "]" * 100_000,  # over max_frame_bytes
    '{"type": "start", "token_ids": ' + "[" * 3000 + "]" * 3000 + "}",
    '{"type": "start", "max_tokens": ' + "9" * 5000 + "}",
    '{"type": "start", "prompt": "a\\ud800b"}',
    '{"type": "start", "messages": []}',
    '{"type": "start", "token_ids": [5], "sampling": {"temperature": 1e-307}}',
    '{"type": "start", "token_ids": [5], "sampling": {"temperature": Infinity}}',
    '{"type": "start", "token_ids": [5], "stop": ["' + "s" * 300 + '"]}',
    '{"type": "draft", "round": 1, "pos": 1, "tokens": [1], "q": [{"ids": [1], "p": [NaN]}]}',
]


def test_client_mistakes_on_the_websocket_are_bad_frame_and_logged_once(ws_url, caplog):
    with (
        caplog.at_level(logging.INFO, logger="eespec.server.ws"),
        connect(ws_url, additional_headers=AUTH) as ws,
    ):
        assert hello(ws)["type"] == "welcome"
        for _ in range(3):
            for frame in BAD_FRAMES:
                reply = reply_to(ws, frame)
                assert reply["type"] == "error" and reply["code"] in ("bad_frame", "too_large"), (
                    frame[:40],
                    reply,
                )
                assert reply["retryable"] is False
        ws.send(b"\x00\x01binary")
        assert json.loads(ws.recv())["code"] == "bad_frame"
    records = [r for r in caplog.records if r.name == "eespec.server.ws"]
    assert len(records) == 1 and records[0].exc_info is None  # once per connection, no traceback


# -- defect 12: slots are bounded, freed, and counted for HTTP too -----------------------------------------


def test_silent_sockets_are_closed_and_free_their_slots(server, ws_url):
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(ws_url, additional_headers=AUTH)) for _ in range(3)]
        hello(sockets[0])  # holds a slot, then says nothing
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd.code == 1001
    assert wait_for(lambda: gauges(server)["eespec_active_sessions"] == 0)


def test_an_edge_client_closed_for_idling_reconnects_on_its_next_generation(server, target, tok):
    ids = tok("Hi robot").input_ids

    async def idle_then_generate():
        async with EdgeClient(server, DraftEngine(twin(target)), tokenizer=tok, api_key=KEY) as client:
            await asyncio.sleep(2.5)  # past idle_timeout_s: the server closed the socket (1001)
            return await client.generate(ids, max_tokens=12)

    result = asyncio.run(idle_then_generate())
    assert result.token_ids == oracle_greedy(target, ids, 12, eos=EOS)
    assert result.extra["reconnects"] == 1


def test_per_key_and_server_wide_limits_cover_websockets_and_http(server, ws_url):
    with contextlib.ExitStack() as stack:

        def opened(headers):
            return stack.enter_context(connect(ws_url, additional_headers=headers))

        for _ in range(4):  # key A's limit
            assert hello(opened(AUTH))["type"] == "welcome"
        reply = hello(opened(AUTH))
        assert reply["code"] == "limit_exceeded" and reply["retryable"] is True
        r = httpx.post(server + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=AUTH)
        assert r.status_code == 429 and r.headers["retry-after"]
        other = {"Authorization": f"Bearer {OTHER}"}
        for _ in range(2):  # the server's 6 slots
            assert hello(opened(other))["type"] == "welcome"
        r = httpx.post(server + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=other)
        assert r.status_code == 503 and r.json()["error"]["code"] == "limit_exceeded"
    assert wait_for(
        lambda: (
            httpx.post(
                server + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=AUTH
            ).status_code
            == 200
        )
    )


# -- defect 7: resume races and capped detached records ----------------------------------------------------


def _detached_session(ws_url, tok) -> tuple[str, list[int]]:
    with connect(ws_url, additional_headers=AUTH) as ws:
        session_id = hello(ws)["session_id"]
        ids = tok("Hello").input_ids
        started = reply_to(ws, {"type": "start", "token_ids": ids, "max_tokens": 30})
        return session_id, [*ids, started["first_token"]]


def test_two_resumes_of_one_session_never_give_two_live_copies(server, ws_url, tok, fault):
    from shared.hashing import ids_hash

    session_id, committed = _detached_session(ws_url, tok)
    frame = {"type": "resume", "session_id": session_id, "committed_len": len(committed)}
    frame["committed_hash"] = ids_hash(committed)

    async def resume_once():
        async with aconnect(ws_url, additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 1}))
            await ws.recv()
            await ws.send(json.dumps(frame))
            return json.loads(await ws.recv())

    async def both():
        return await asyncio.gather(resume_once(), resume_once(), resume_once())

    fault.slow_s = 0.2  # a slow re-prefill: the window the race needs
    try:
        replies = asyncio.run(both())
    finally:
        fault.slow_s = 0.0
    kinds = sorted(r.get("code", r["type"]) for r in replies)
    assert kinds == ["resumed", "session_not_found", "session_not_found"], replies


def test_detached_records_are_capped(server, ws_url, tok):
    ids = [_detached_session(ws_url, tok)[0] for _ in range(5)]
    assert wait_for(lambda: gauges(server)["eespec_detached_sessions"] <= 3)
    with connect(ws_url, additional_headers=AUTH) as ws:
        hello(ws)
        reply = reply_to(
            ws, {"type": "resume", "session_id": ids[0], "committed_len": 1, "committed_hash": "0"}
        )
        assert reply["code"] == "session_not_found"


# -- defects 2, 5, 6: the edge honours `retryable`, restarts with fresh randomness, and cleans up ----------


async def _generate(url, engine, tok, ids, max_tokens=25, **kwargs):
    async with EdgeClient(url, engine, tokenizer=tok, api_key=KEY, backoff_s=0.01, **kwargs) as client:
        return await client.generate(ids, max_tokens=max_tokens)


def test_the_edge_retries_a_rolled_back_round_and_stays_exact(server, target, tok, fault):
    ids = tok("The robot").input_ids
    fault.armed = 2  # two failed verification forwards in a row
    result = asyncio.run(_generate(server, DraftEngine(twin(target)), tok, ids))
    assert fault.armed == 0
    assert result.token_ids == oracle_greedy(target, ids, 25, eos=EOS)


def test_the_edge_restarts_a_generation_the_server_ended(server, target, tok, monkeypatch):
    from cloud_server.engine import TargetSession

    # The server's rounds go through the scheduler, whose update step is `finish_round`.
    real_finish = TargetSession.finish_round
    calls = {"n": 0}

    def finish_that_breaks_once(self, plan, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("a bug outside the engine's guard")  # state in doubt: not retryable
        return real_finish(self, plan, *args, **kwargs)

    monkeypatch.setattr(TargetSession, "finish_round", finish_that_breaks_once)

    async def run():
        async with EdgeClient(
            server, DraftEngine(twin(target)), tokenizer=tok, api_key=KEY, window=2
        ) as client:
            result = await client.generate(ids, max_tokens=25)
            return result

    ids = tok("def f(x):").input_ids
    result = asyncio.run(run())
    assert result.extra["restarts"] == 1
    assert result.token_ids == oracle_greedy(target, ids, 25, eos=EOS)


def test_restart_seed_gives_fresh_uniforms():
    assert restart_seed(7, 10) != restart_seed(7, 11) != 7
    assert restart_seed(7, 10) == restart_seed(7, 10)
    SamplingParams(seed=restart_seed(2**63 - 1, 10**9))  # within the seed range


def test_a_stop_string_spanning_a_restart_still_stops(served, tok):
    """`start.generated` tells the server which prompt ids are output already."""
    from cloud_server.engine import EarlyExitTarget, TargetSession

    session = TargetSession(EarlyExitTarget(twin(served)), eos_ids=[EOS], tokenizer=tok)
    prompt = tok("Hi").input_ids
    started = session.start(prompt, SamplingParams(), max_tokens=40)
    first = tok.decode([started.first_token])
    committed = [*prompt, started.first_token]
    # the stop is the first generated character followed by the next one the target will produce
    restarted = TargetSession(EarlyExitTarget(twin(served)), eos_ids=[EOS], tokenizer=tok)
    nxt = restarted.start(committed, SamplingParams(), max_tokens=40, stop=None)
    stop = first + tok.decode([nxt.first_token])
    again = TargetSession(EarlyExitTarget(twin(served)), eos_ids=[EOS], tokenizer=tok)
    done = again.start(committed, SamplingParams(), max_tokens=40, stop=[stop], generated=1)
    assert done.finished and done.finish_reason == "stop"
    blind = TargetSession(EarlyExitTarget(twin(served)), eos_ids=[EOS], tokenizer=tok)
    assert not blind.start(committed, SamplingParams(), max_tokens=40, stop=[stop]).finished


class CountingDraft(DraftEngine):
    """A slow draft that counts the drafts running right now."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.running = 0
        self._count_lock = threading.Lock()  # `+=` from several threads would lose updates

    def draft(self, *args, **kwargs):
        with self._count_lock:
            self.running += 1
        try:
            time.sleep(0.02)
            return super().draft(*args, **kwargs)
        finally:
            with self._count_lock:
                self.running -= 1


def test_the_edge_leaves_no_draft_running_after_an_error_or_a_cancellation(server, target, tok, fault):
    engine = CountingDraft(twin(target))
    ids = tok("Hello there").input_ids

    async def failing():
        async with EdgeClient(server, engine, tokenizer=tok, api_key=KEY, backoff_s=0.01, max_retries=1) as c:
            fault.armed = 5  # more failures than retries: the error reaches the caller
            try:
                await c.generate(ids, max_tokens=40)
            finally:
                fault.armed = 0
            return engine.running

    with pytest.raises(EdgeError) as info:
        asyncio.run(failing())
    assert info.value.code == "internal"
    assert engine.running == 0 and not engine._lock.locked()

    async def cancelled():
        async with EdgeClient(server, engine, tokenizer=tok, api_key=KEY) as c:
            task = asyncio.create_task(c.generate(ids, max_tokens=60))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return engine.running

    assert asyncio.run(cancelled()) == 0
    # and the next generation on the same engine is exact
    result = asyncio.run(_generate(server, engine, tok, ids))
    assert result.token_ids == oracle_greedy(target, ids, 25, eos=EOS)


# -- defect 13: abandoned work is dropped before it runs ---------------------------------------------------


def test_the_worker_drops_queued_work_of_a_cancelled_caller():
    worker = InferenceWorker()
    release = threading.Event()
    ran: list[str] = []

    async def scenario():
        blocker = asyncio.create_task(worker.run(lambda: (release.wait(5), ran.append("blocker"))))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(worker.run(lambda: ran.append("abandoned")))
        await asyncio.sleep(0.05)
        queued.cancel()
        release.set()
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await queued
        await worker.run(lambda: ran.append("next"))

    asyncio.run(scenario())
    assert ran == ["blocker", "next"]

    async def cancel_while_running():
        started, finished = threading.Event(), []
        task = asyncio.create_task(worker.run(lambda: (started.set(), time.sleep(0.3), finished.append(1))))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return finished  # the caller hears of its cancellation only once the job is over

    assert asyncio.run(cancel_while_running()) == [1]
    worker.shutdown()


def test_prefills_of_clients_that_left_are_not_run(server, ws_url, fault):
    """Defect 13: five clients send a prompt and leave at once, on a model slowed to 0.3 s a forward;
    a legitimate start then waits for at most the one prefill already running, not for all five."""
    fault.slow_s = 0.3
    try:
        for _ in range(5):
            with connect(ws_url, additional_headers=AUTH) as ws:
                hello(ws)
                ws.send(json.dumps({"type": "start", "token_ids": list(range(10, 60)), "max_tokens": 5}))
        t0 = time.monotonic()
        with connect(ws_url, additional_headers=AUTH) as ws:
            hello(ws)
            started = reply_to(ws, {"type": "start", "token_ids": [40, 41], "max_tokens": 3})
        waited = time.monotonic() - t0
    finally:
        fault.slow_s = 0.0
    assert started["type"] == "started"
    assert waited < 4 * 0.3, f"waited {waited:.2f} s: abandoned prefills ran"


# -- defect 1: an HTTP stream whose client leaves before the first chunk frees its cache ------------------


def _asgi_http(app, body: bytes, send_fails: bool):
    """Drive `app` as an ASGI server would: the request, then a disconnect; `send` may fail at once
    (the transport is gone, as spec 2.4 servers report it) or record the messages."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    async def send(message):
        if send_fails:
            raise OSError("the client is gone")
        sent.append(message)

    async def call():
        async with app.router.lifespan_context(app):
            with contextlib.suppress(Exception):  # the failing send surfaces here, as in a server
                await app(scope, receive, send)
            state = app.state.eespec
            state.refresh_gauges()
            return len(state.http_generations), len(state.slots), state.metrics.kv_cache_bytes._value.get()

    return asyncio.run(call())


@pytest.mark.parametrize("send_fails", [True, False], ids=["gone-before-first-byte", "disconnect-event"])
def test_a_stream_dropped_before_its_first_chunk_frees_its_cache(served, tok, send_fails):
    app = create_app(ServerSettings(api_key=[KEY]), loaded=tiny_loaded(served, tok))
    body = json.dumps({"prompt": "Hello", "max_tokens": 500, "stream": True}).encode()
    assert _asgi_http(app, body, send_fails) == (0, 0, 0.0)


def test_streamed_text_equals_the_whole_decode(server, target, tok):
    """Incremental detokenisation (DecodeStream) gives exactly the text of the non-streamed route."""
    body = {"prompt": "The robot", "max_tokens": 40, "temperature": 0}
    whole = httpx.post(server + "/v1/completions", json=body, headers=AUTH).json()["choices"][0]["text"]
    with httpx.stream("POST", server + "/v1/completions", json={**body, "stream": True}, headers=AUTH) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    ids = oracle_greedy(target, tok("The robot").input_ids, 40, eos=EOS)
    assert text == whole == tok.decode(ids, skip_special_tokens=True)


# -- defect 9: `generate --server` no longer ignores options it cannot honour -------------------------------


@pytest.mark.parametrize("extra", [["--exits-dir", "/tmp/heads"], ["--target", "some-other-model"]])
def test_generate_against_a_server_refuses_local_only_options(extra):
    from typer.testing import CliRunner

    from eespec.cli import app

    result = CliRunner().invoke(app, ["generate", "--server", "ws://127.0.0.1:1", "--prompt", "x", *extra])
    assert result.exit_code == 2
    assert "--local only" in result.output
