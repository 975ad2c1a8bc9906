"""The edge client: protocol 1 over a websocket, with preemptive drafting (DESIGN.md, "Decoding protocol").

    async with EdgeClient("ws://127.0.0.1:8000", draft_engine, tokenizer=tok, api_key="k") as client:
        result = await client.generate(prompt_ids, max_tokens=64)

`generate_sync` wraps it for scripts.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from edge_client.decoder import GenerationResult
from edge_client.draft import DraftEngine, DraftWindow
from edge_client.metrics import GenerationMetrics
from edge_client.predraft import Hypothesis, Predrafter, PredraftStats
from shared.hashing import vocab_hash
from shared.protocol import MESSAGE_ADAPTER, Early, Error, Hello, Start, Started, Verdict, Welcome
from shared.sampling import SamplingParams


class EdgeError(Exception):
    """An `error` frame from the server, or a broken protocol exchange."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class EdgeClient:
    def __init__(
        self,
        url: str,
        draft: DraftEngine,
        *,
        tokenizer: Any = None,
        api_key: str | None = None,
        window: int = 4,
        preempt: bool = True,
        optimistic: bool = True,
        early_trust: float = 0.5,
        exits: Sequence[int] | None = None,
        open_timeout: float = 30.0,
    ) -> None:
        self.url = _speculate_url(url)
        self.draft = draft
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.window = window
        self.preempt = preempt
        self.optimistic = optimistic
        self.early_trust = early_trust
        self.exits = list(exits) if exits is not None else None
        self.open_timeout = open_timeout
        self.ws: ClientConnection | None = None
        self.welcome: Welcome | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    async def __aenter__(self) -> EdgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> Welcome:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.ws = await connect(
            self.url, additional_headers=headers, open_timeout=self.open_timeout, max_size=None
        )
        hello = Hello(
            vocab_hash=vocab_hash(self.tokenizer) if self.tokenizer is not None else None, exits=self.exits
        )
        await self._send(hello.model_dump(mode="json", exclude_none=True))
        self.welcome = await self._expect(Welcome)
        if self.window > self.welcome.limits.max_window:
            self.window = self.welcome.limits.max_window
        return self.welcome

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] | None = None,
    ) -> GenerationResult:
        if self.ws is None:
            await self.connect()
        sampling = sampling or SamplingParams()
        metrics = GenerationMetrics()
        stats = PredraftStats()
        predrafter = Predrafter(self.draft, self.window, sampling, stats)
        rtts: list[float] = []
        up0, down0 = self.bytes_up, self.bytes_down
        t_start = time.perf_counter()
        start = Start(
            token_ids=list(prompt_ids),
            sampling=sampling,
            max_tokens=max_tokens,
            stop=list(stop) if stop else None,
        )
        await self._send(start.model_dump(mode="json", exclude_none=True))
        started = await self._expect(Started)
        metrics.server_busy_s += started.server_ms / 1000.0
        committed: list[int] = [*prompt_ids, started.first_token]
        finished, finish_reason = started.finished, started.finish_reason
        next_window: DraftWindow | None = None
        round_no = 0
        while not finished:
            round_no += 1
            if next_window is None:
                next_window = await asyncio.to_thread(self.draft.draft, committed, self.window, sampling)
                metrics.draft_s += next_window.draft_s
            window = next_window
            t_sent = time.perf_counter()
            await self._send(window.to_message(round_no).model_dump(mode="json", exclude_none=True))
            if self.preempt and self.optimistic:
                guess = Hypothesis((*window.prefix, *window.tokens), "optimistic", rank=0.0, guess_next=True)
                await predrafter.request(guess)
            last_early: Early | None = None
            while True:
                frame = await self._receive()
                if isinstance(frame, Early) and frame.round == round_no:
                    metrics.early_predictions += 1
                    last_early = frame
                    if self.preempt:
                        prefix = (*window.prefix, *window.tokens[: frame.accepted], frame.token)
                        # A confident exit outranks the optimistic guess; a deeper exit outranks a shallower.
                        rank = frame.layer if frame.confidence >= self.early_trust else 0.0
                        await predrafter.request(Hypothesis(prefix, f"early@{frame.layer}", rank))
                elif isinstance(frame, Verdict) and frame.round == round_no:
                    verdict = frame
                    break
            metrics.verify_wait_s += time.perf_counter() - t_sent
            rtts.append(max(0.0, (time.perf_counter() - t_sent) * 1000.0 - verdict.server_ms))
            metrics.server_busy_s += verdict.server_ms / 1000.0
            metrics.rounds += 1
            metrics.drafted += len(window.tokens)
            metrics.accepted += verdict.accepted
            committed.extend(window.tokens[: verdict.accepted])
            if verdict.token is not None:
                committed.append(verdict.token)
            if last_early is not None:
                metrics.early_rounds += 1
                metrics.early_hits += (last_early.accepted, last_early.token) == (
                    verdict.accepted,
                    verdict.token,
                )
            finished, finish_reason = verdict.finished, verdict.finish_reason
            next_window = None if finished else await predrafter.settle(tuple(committed))
        await predrafter.stop()
        metrics.draft_s += predrafter.draft_s
        metrics.predraft_started = sum(stats.started.values())
        metrics.predraft_hits = sum(stats.hits.values())
        metrics.total_s = time.perf_counter() - t_start
        generated = committed[len(prompt_ids) :]
        metrics.generated_tokens = len(generated)
        result = GenerationResult(token_ids=generated, finish_reason=finish_reason, metrics=metrics)
        result.extra = {
            "predraft_by_source": {
                s: {"started": n, "hits": stats.hits.get(s, 0)} for s, n in stats.started.items()
            },
            "rtt_ms_p50": statistics.median(rtts) if rtts else None,
            "rtt_ms_p95": _percentile(rtts, 95) if rtts else None,
            "bytes_up": self.bytes_up - up0,
            "bytes_down": self.bytes_down - down0,
        }
        return result

    async def _send(self, payload: dict[str, Any]) -> None:
        assert self.ws is not None
        text = json.dumps(payload, separators=(",", ":"))
        self.bytes_up += len(text.encode())
        await self.ws.send(text)

    async def _receive(self) -> Any:
        assert self.ws is not None
        text = await self.ws.recv()
        self.bytes_down += len(text) if isinstance(text, bytes) else len(text.encode())
        frame = MESSAGE_ADAPTER.validate_json(text)
        if isinstance(frame, Error):
            raise EdgeError(frame.code, frame.message, frame.retryable)
        return frame

    async def _expect(self, kind: type) -> Any:
        while True:
            frame = await self._receive()
            if isinstance(frame, kind):
                return frame


def _speculate_url(url: str) -> str:
    url = url.rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url.removeprefix("http://")
    elif url.startswith("https://"):
        url = "wss://" + url.removeprefix("https://")
    return url if url.endswith("/v1/speculate") else url + "/v1/speculate"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def generate_sync(url: str, draft: DraftEngine, prompt_ids: Sequence[int], **kwargs: Any) -> GenerationResult:
    """One request with a fresh connection, for scripts: `generate_sync(url, engine, ids, max_tokens=32)`."""
    client_keys = {"tokenizer", "api_key", "window", "preempt", "optimistic", "early_trust", "exits"}
    client_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in client_keys}

    async def run() -> GenerationResult:
        async with EdgeClient(url, draft, **client_kwargs) as client:
            return await client.generate(prompt_ids, **kwargs)

    return asyncio.run(run())
