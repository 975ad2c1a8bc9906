"""The OpenAI-compatible HTTP surface (the cloud-only baseline), health, metrics and auth on a real server."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import APIStatusError, OpenAI

from cloud_server.app import create_app
from cloud_server.engine.autoregressive import AutoregressiveGeneration
from cloud_server.http_api import TextStream
from cloud_server.settings import ServerSettings
from shared.sampling import SamplingParams
from shared.tiny import tiny_llama, tiny_tokenizer
from tests.conftest import DEVICE
from tests.helpers import oracle_greedy
from tests.servers import running_server, tiny_loaded

EOS = 2
KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["Hello", "def f(x):", "The robot walks"]
METRIC_NAMES = [
    "eespec_requests_total",
    "eespec_generated_tokens_total",
    "eespec_rounds_total",
    "eespec_draft_tokens_total",
    "eespec_accepted_tokens_total",
    "eespec_early_predictions_total",
    "eespec_early_hits_total",
    "eespec_verify_seconds",
    "eespec_prefill_seconds",
    "eespec_active_sessions",
    "eespec_detached_sessions",
    "eespec_kv_cache_bytes",
    "eespec_queue_depth",
    "eespec_errors_total",
]


@pytest.fixture(scope="module")
def model():
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4).to(DEVICE)
    model.generation_config.eos_token_id = EOS
    return model


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def url(model, tok):
    with running_server(tiny_loaded(model, tok), api_key=[KEY]) as url:
        yield url


@pytest.fixture(scope="module")
def endless_url(model, tok):
    """The same model without EOS, for generations that run as long as asked."""
    with running_server(dataclasses.replace(tiny_loaded(model, tok), eos_ids=[]), api_key=[KEY]) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def expected(model, tok, prompt_ids: list[int], max_tokens: int) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) of transformers' greedy generate()."""
    ids = oracle_greedy(model, prompt_ids, max_tokens, eos=EOS)
    reason = "stop" if ids[-1] == EOS else "length"
    return tok.decode(ids, skip_special_tokens=True), reason, len(ids)


def generated_count(url: str) -> float:
    text = httpx.get(url + "/metrics", headers=AUTH).text
    match = re.search(r'eespec_generated_tokens_total\{mode="autoregressive"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def sse_events(body: str) -> list[str]:
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


# -- the generation class ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [1, 7, 60])
def test_autoregressive_equals_generate(model, tok, max_tokens):
    loaded = tiny_loaded(model, tok)
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        gen = AutoregressiveGeneration(loaded, SamplingParams(), max_tokens)
        tokens = [gen.prefill(ids)]
        while not gen.finished:
            tokens.append(gen.step())
        assert tokens == gen.generated == oracle_greedy(model, ids, max_tokens, eos=EOS)
        assert gen.kv_bytes == 0  # the cache goes once the generation ends


def test_close_stops_a_generation(model, tok):
    gen = AutoregressiveGeneration(tiny_loaded(model, tok), SamplingParams(), 50)
    gen.prefill(tok("Hello").input_ids)
    assert gen.kv_bytes > 0
    gen.close()
    assert gen.finished and gen.kv_bytes == 0
    with pytest.raises(RuntimeError):
        gen.step()


class ByteTokenizer:
    """Ids are UTF-8 bytes, so one character can span several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_never_splits_a_character_and_holds_back_stops():
    text = "héllo € wörld 🤖 end"
    stream = TextStream(ByteTokenizer())
    deltas = [stream.push(b) for b in text.encode()]
    deltas.append(stream.finish())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)

    stream = TextStream(ByteTokenizer(), ["€ w"])
    deltas = []
    for b in text.encode():
        deltas.append(stream.push(b))
        if stream.stops.completed(stream.ids):
            break
    deltas.append(stream.finish())
    assert "".join(deltas) == "héllo "
    assert not any("€" in d for d in deltas)


# -- completions ------------------------------------------------------------------------------------------


def test_greedy_completions_equal_generate(url, client, model, tok):
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        for max_tokens in (5, 64):
            text, reason, n = expected(model, tok, ids, max_tokens)
            out = client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
            assert out.object == "text_completion" and out.model == "tiny" and out.id
            assert out.choices[0].text == text
            assert out.choices[0].finish_reason == reason
            assert out.usage.prompt_tokens == len(ids)
            assert out.usage.completion_tokens == n
            assert out.usage.total_tokens == len(ids) + n
            extra = out.usage.model_extra
            assert extra["ttft_ms"] > 0 and extra["total_ms"] >= extra["ttft_ms"]
            assert (extra["ms_per_token"] is None) == (n == 1)
            assert not {"accepted", "rounds", "mean_accepted_len"} & set(extra)
    # a prompt of token ids; max_tokens defaults to 16
    ids = [5, 40, 41, 60, 7]
    out = httpx.post(url + "/v1/completions", json={"prompt": ids, "temperature": 0}, headers=AUTH).json()
    assert out["choices"][0]["text"] == expected(model, tok, ids, 16)[0]
    assert out["usage"]["completion_tokens"] <= 16


def test_streaming_through_the_openai_client(client, model, tok):
    prompt = "Hello"
    text, reason, n = expected(model, tok, tok(prompt).input_ids, 40)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    body, usage_chunk = chunks[:-1], chunks[-1]
    assert "".join(c.choices[0].text for c in body) == text
    assert [c.choices[0].finish_reason for c in body].count(reason) == 1
    assert body[-1].choices[0].finish_reason == reason
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == n
    assert usage_chunk.usage.model_extra["ttft_ms"] > 0
    assert len({c.id for c in chunks}) == 1
    # without include_usage: no usage chunk
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=5, stream=True, seed=1))
    assert all(c.choices and c.usage is None for c in chunks)


def test_raw_sse(url, model, tok):
    text, reason, n = expected(model, tok, tok("Hello").input_ids, 12)
    body = {
        "prompt": "Hello",
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == text
    assert chunks[-2]["choices"][0]["finish_reason"] == reason
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == n
    assert all(c["usage"] is None for c in chunks[:-1])


# -- chat and models --------------------------------------------------------------------------------------


def test_chat_completions(client, model, tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi robot"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    text, reason, n = expected(model, tok, list(ids), 20)
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text
    assert out.choices[0].finish_reason == reason
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == n

    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == reason
    assert chunks[-1].usage.completion_tokens == n


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


# -- sampling parameters and stop strings -----------------------------------------------------------------


def test_seeded_sampling_is_reproducible(client, model, tok):
    def sample(seed: int, stream: bool = False, **extra) -> str:
        kwargs = {"model": "tiny", "prompt": "Hello", "max_tokens": 30, "temperature": 1.3, "seed": seed}
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
        return client.completions.create(extra_body=extra or None, **kwargs).choices[0].text

    first = sample(7)
    assert sample(7) == first == sample(7, stream=True)
    assert len({sample(s) for s in range(1, 5)} | {first}) > 1
    # top_k (our extension) = 1 leaves only the argmax: the greedy output
    assert sample(3, top_k=1) == expected(model, tok, tok("Hello").input_ids, 30)[0]


def test_stop_strings_cut_the_text(client, model, tok):
    full = expected(model, tok, tok("Hello").input_ids, 40)[0]
    for stop in (full[10:12], [full[6], "never"]):
        first = stop if isinstance(stop, str) else stop[0]
        want = full[: full.find(first)]
        out = client.completions.create(model="tiny", prompt="Hello", max_tokens=40, temperature=0, stop=stop)
        assert out.choices[0].text == want and out.choices[0].finish_reason == "stop"
        chunks = client.completions.create(
            model="tiny", prompt="Hello", max_tokens=40, temperature=0, stop=stop, stream=True
        )
        assert "".join(c.choices[0].text for c in chunks) == want


# -- errors, limits and the serving loop ------------------------------------------------------------------


def test_too_long_prompt_and_limits(url, client):
    before = httpx.get(url + "/metrics", headers=AUTH).text
    r = httpx.post(url + "/v1/completions", json={"prompt": "x" * 5000}, headers=AUTH)
    assert r.status_code == 413  # too large is 413, so OpenAI clients do not retry it as a bad request
    assert r.json()["error"]["code"] == "too_large" and r.json()["error"]["message"]
    with pytest.raises(APIStatusError) as info:
        client.completions.create(model="tiny", prompt="Hi", max_tokens=100_000)
    assert info.value.status_code == 400 and info.value.code == "limit_exceeded"
    after = httpx.get(url + "/metrics", headers=AUTH).text
    assert 'eespec_errors_total{code="too_large"}' in after
    assert before != after
    # and it keeps serving
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=3).usage.completion_tokens >= 1


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"max_tokens": 3}',
        b'{"prompt": 5}',
        b'{"prompt": "x", "max_tokens": 0}',
        b'{"prompt": "x", "temperature": -1}',
        b'{"prompt": "x", "n": 2}',
        b'{"prompt": []}',
        b'{"prompt": [1, 500]}',
    ],
)
def test_bad_bodies_are_bad_frame(url, body):
    r = httpx.post(
        url + "/v1/completions", content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "bad_frame" and error["type"] == "invalid_request_error" and error["message"]


def test_chat_bad_body(url):
    r = httpx.post(url + "/v1/chat/completions", json={"messages": []}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_frame"


def test_auth(url):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics")):
            r = httpx.request(method, url + path, headers=headers, json={"prompt": "x"})
            assert r.status_code == 401, (headers, path)
            assert r.json()["error"]["code"] == "unauthorized"
        assert httpx.get(url + "/health", headers=headers).status_code == 200
    bad = OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(APIStatusError) as info:
        bad.completions.create(model="tiny", prompt="x", max_tokens=2)
    assert info.value.status_code == 401


def test_metrics_names(url, client):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    text = httpx.get(url + "/metrics", headers=AUTH).text
    for name in METRIC_NAMES:
        assert name in text, name
    assert 'eespec_requests_total{route="completions"}' in text
    assert re.search(r"eespec_prefill_seconds_count [1-9]", text)


def test_disconnect_stops_generating(endless_url):
    body = {"prompt": "Hello", "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", endless_url + "/v1/completions", json=body, headers=AUTH) as response:
        for i, _line in enumerate(response.iter_lines()):
            if i >= 10:
                break
    a = settled_count(endless_url)
    assert a < 200
    # a non-streaming request whose client gives up
    with pytest.raises(httpx.TimeoutException):
        httpx.post(endless_url + "/v1/completions", json={**body, "stream": False}, headers=AUTH, timeout=0.3)
    b = settled_count(endless_url)
    assert b < a + 1500


def settled_count(url: str, interval: float = 0.3, deadline_s: float = 15.0) -> int:
    """The generated-token counter once it stops moving (generation stopped), polled with a deadline."""
    previous = generated_count(url)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        time.sleep(interval)
        current = generated_count(url)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"generation still running after {deadline_s} s")


def test_requests_interleave(endless_url):
    """A long generation blocks neither the event loop nor a short request (token-level interleaving)."""
    long_done: list[float] = []

    def long_request() -> None:
        body = {"prompt": "Hello", "max_tokens": 1500, "temperature": 0}
        httpx.post(endless_url + "/v1/completions", json=body, headers=AUTH, timeout=120)
        long_done.append(time.perf_counter())

    before = generated_count(endless_url)
    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 10
    while generated_count(endless_url) < before + 10:  # the long one is generating
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert httpx.get(endless_url + "/health").status_code == 200
    r = httpx.post(endless_url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 5}, headers=AUTH)
    short_done = time.perf_counter()
    thread.join()
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert long_done and short_done < long_done[0]


def test_health_503_while_loading(model, tok):
    release = threading.Event()

    def loader(_settings: ServerSettings):
        release.wait(timeout=30)
        return tiny_loaded(model, tok)

    app = create_app(ServerSettings(api_key=[KEY]), loader=loader)
    try:
        with TestClient(app) as http:
            r = http.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            r = http.post("/v1/completions", json={"prompt": "x"}, headers=AUTH)
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
            assert http.get("/v1/models", headers=AUTH).status_code == 503
            release.set()
            deadline = time.monotonic() + 10
            while http.get("/health").status_code != 200:
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.02)
            assert http.get("/health").json()["model"] == "tiny"
            r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=AUTH)
            assert r.status_code == 200
    finally:
        release.set()
