"""Protocol fuzzing over a real websocket (issue 12): generated frames in every session state.

Malformed JSON, wrong types, huge and negative numbers, NaN/Infinity, deep nesting, binary and empty
frames, frames at and over the limit, every client message in every state. Every frame gets answers that
are valid protocol messages, every `error` carries a documented code, the server logs no unhandled
exception and stays up, and a legitimate client is still exact afterwards.

The fast suite runs a small budget; `@pytest.mark.slow` runs ≥ 10,000 frames (hypothesis profiles below).
"""

from __future__ import annotations

import asyncio
import json
import logging
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from shared.errors import ErrorCode
from shared.protocol import MESSAGE_ADAPTER, Error
from shared.tiny import tiny_llama, tiny_tokenizer
from tests.helpers import oracle_greedy, twin
from tests.servers import running_server, tiny_loaded

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FRAME_LIMIT = 4096
DOCUMENTED_CODES = set(ErrorCode.__args__)  # type: ignore[attr-defined]
CLIENT_TYPES = ["hello", "start", "draft", "cancel", "resume", "ping"]
SERVER_TYPES = ["welcome", "started", "early", "verdict", "cancelled", "resumed", "pong", "error"]

settings.register_profile(
    "fuzz-fast", max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
settings.register_profile(
    "fuzz-slow", max_examples=2400, deadline=None, suppress_health_check=list(HealthCheck), database=None
)


class ErrorLog(logging.Handler):
    """ERROR records of the server's loggers (an unhandled exception in the server lands here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4)
    model.generation_config.eos_token_id = 2
    return model


@pytest.fixture(scope="module")
def server(target, tok):
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    loaded = tiny_loaded(twin(target), tok, exits=(1, 3))
    limits = dict(max_frame_bytes=FRAME_LIMIT, max_prompt_tokens=64, max_tokens=32, max_window=8)
    try:
        with running_server(loaded, api_key=[KEY], max_sessions=16, **limits) as url:
            yield url, errors
    finally:
        logging.getLogger().removeHandler(errors)


# -- strategies --------------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(0, 120),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 1e-307, 1e308]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20))
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(string.ascii_lowercase, max_size=8), inner, max_size=5),
    ),
    max_leaves=20,
)
IDS = st.lists(st.one_of(st.integers(0, 98), st.integers(-5, 200)), min_size=0, max_size=12)
SAMPLING = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.one_of(
            st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 0.7, 1e-307])
        ),
        "top_k": st.one_of(st.integers(-3, 200), st.just(10**30)),
        "top_p": st.floats(allow_nan=True, allow_infinity=True),
        "seed": st.integers(-5, 2**64),
    },
)
PROPOSAL = st.fixed_dictionaries(
    {"ids": IDS, "p": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12)}
)


def typed(kind: str) -> st.SearchStrategy[dict]:
    fields = {
        "hello": {"protocol": st.one_of(st.just(1), NUMBERS), "exits": st.one_of(st.none(), IDS)},
        "start": {
            "token_ids": IDS,
            "prompt": st.text(max_size=40),
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.text(max_size=8), "content": st.text(max_size=20)}),
                max_size=3,
            ),
            "sampling": SAMPLING,
            "max_tokens": NUMBERS,
            "stop": st.lists(st.text(max_size=10), max_size=4),
        },
        "draft": {
            "round": st.one_of(st.integers(0, 4), NUMBERS),
            "pos": st.one_of(st.integers(0, 40), NUMBERS),
            "tokens": IDS,
            "q": st.lists(PROPOSAL, max_size=4),
        },
        "resume": {
            "session_id": st.text(max_size=40),
            "committed_len": NUMBERS,
            "committed_hash": st.text(max_size=20),
        },
        "cancel": {},
        "ping": {},
    }.get(kind, {"x": JSON_VALUES})
    return st.fixed_dictionaries({"type": st.just(kind)}, optional={**fields, "junk": JSON_VALUES})


TYPED = st.one_of([typed(k) for k in CLIENT_TYPES + SERVER_TYPES + ["teleport", ""]])


def encode(value) -> str:
    return json.dumps(value, allow_nan=True)


FRAMES = st.one_of(
    TYPED.map(encode),
    JSON_VALUES.map(encode),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.just(""),
    st.integers(1, 50_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 6000).map(lambda n: '{"type": "start", "max_tokens": ' + "9" * n + "}"),
    st.integers(FRAME_LIMIT - 40, FRAME_LIMIT + 40).map(lambda n: encode({"type": "ping", "pad": "x" * n})),
    st.sampled_from(['{"type": "start", "prompt": "\\ud800"}', '{"type": "draft", "q": [{"p": [NaN]}]}']),
)
STATES = st.sampled_from(["fresh", "hello", "started", "finished"])
GREETING = {"type": "hello", "protocol": 1}


# -- the driver --------------------------------------------------------------------------------------------


def check_replies(ws, sent: int) -> None:
    """Read the answers to one frame: early frames, then exactly one other message."""
    while True:
        raw = ws.recv(timeout=30)
        assert isinstance(raw, str), "the server sends JSON text only"
        message = MESSAGE_ADAPTER.validate_json(raw)
        if isinstance(message, Error):
            assert message.code in DOCUMENTED_CODES, message
            assert "Traceback" not in message.message and "/" not in message.message, message
        if message.type != "early":
            return


def enter_state(ws, state: str, tok) -> None:
    if state == "fresh":
        return
    ws.send(json.dumps(GREETING))
    assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
    if state in ("started", "finished"):
        start = {
            "type": "start",
            "token_ids": tok("Hi").input_ids,
            "max_tokens": 1 if state == "finished" else 20,
        }
        ws.send(json.dumps(start))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"


def fuzz(server, tok, counter: list[int]):
    url, _errors = server
    ws_url = url.replace("http://", "ws://") + "/v1/speculate"

    @given(state=STATES, frames=st.lists(FRAMES, min_size=1, max_size=12))
    def one_connection(state, frames):
        with connect(ws_url, additional_headers=AUTH, max_size=None) as ws:
            enter_state(ws, state, tok)
            for frame in frames:
                ws.send(frame)
                counter[0] += 1
                check_replies(ws, counter[0])

    return one_connection


def after_fuzzing(server, target, tok) -> None:
    url, errors = server
    assert not errors.records, [r.getMessage() for r in errors.records][:5]
    assert httpx.get(url + "/health").status_code == 200
    ids = tok("The robot walks").input_ids

    async def legit():
        async with EdgeClient(url, DraftEngine(twin(target)), tokenizer=tok, api_key=KEY) as client:
            return await client.generate(ids, max_tokens=20)

    assert asyncio.run(legit()).token_ids == oracle_greedy(target, ids, 20, eos=2)


def test_fuzzed_frames_get_documented_answers(server, target, tok):
    counter = [0]
    settings(settings.get_profile("fuzz-fast"))(fuzz(server, tok, counter))()
    assert counter[0] >= 25
    after_fuzzing(server, target, tok)


@pytest.mark.slow
def test_ten_thousand_fuzzed_frames(server, target, tok):
    counter = [0]
    settings(settings.get_profile("fuzz-slow"))(fuzz(server, tok, counter))()
    assert counter[0] >= 10_000, counter[0]
    after_fuzzing(server, target, tok)
