"""The edge client: protocol 1 over a websocket (DESIGN.md, "Decoding protocol").

    async with EdgeClient("ws://127.0.0.1:8000", draft_engine, tokenizer=tok, api_key="k") as client:
        result = await client.generate(prompt_ids, max_tokens=64)

Beyond one exchange per round it does:
* preemptive drafting: on `early` frames (and optimistically, before any) it drafts the next window;
* adaptive windows (`window=None`): the draft length that maximises expected tokens per second;
* resume: a dropped socket is reconnected with backoff and the session resumed (`resume`), or restarted
  from the committed tokens when the server lost it;
* edge-only fallback (`fallback="continue"`): while the cloud is unreachable or slower than a budget the
  draft keeps generating, streamed as unverified events; when the link returns they are submitted as
  windows and the ones the target rejects are retracted.
Nothing of this changes the output: only verdicts commit tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from edge_client.decoder import GenerationResult
from edge_client.draft import DraftEngine, DraftGrammar, DraftWindow
from edge_client.events import EventCallback, StreamEvent
from edge_client.predraft import Hypothesis, Predrafter, PredraftStats
from edge_client.rounds import RoundLedger
from edge_client.window import AdaptiveWindow
from shared.grammar import GrammarSpec, parse_grammar
from shared.hashing import ids_hash, vocab_hash
from shared.images import ImagePayload, decode_payload, payload_from_image
from shared.protocol import (
    MESSAGE_ADAPTER,
    Early,
    Error,
    Hello,
    Resume,
    Resumed,
    Start,
    Started,
    Verdict,
    Welcome,
)
from shared.sampling import SamplingParams

log = logging.getLogger("eespec.edge")
LINK_ERRORS = (ConnectionClosed, OSError, InvalidHandshake, asyncio.TimeoutError)


class EdgeError(Exception):
    """An `error` frame from the server, or a broken protocol exchange."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class LinkLost(Exception):
    """The socket dropped, or the server stayed silent past `verdict_timeout_s`."""


@dataclass(kw_only=True)
class _Generation(RoundLedger):
    """One request's books (`RoundLedger`) plus what the network adds: the stream shown to the caller
    (verified and unverified tokens, retractions), the session, windows, RTTs and link events."""

    sampling: SamplingParams
    max_tokens: int
    stop: list[str] | None
    on_event: EventCallback | None
    grammar: GrammarSpec | None = None
    images: list[ImagePayload] = field(default_factory=list)  # sent with every start (and restart)
    draft_grammar: DraftGrammar | None = None  # the same grammar on the draft: legal proposals only
    provisional: list[int] = field(default_factory=list)  # unverified tokens shown after `committed`
    session_id: str | None = None
    started: bool = False
    next_window: DraftWindow | None = None  # pre-drafted after the last verdict (a hit)
    rtts_ms: list[float] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    window_reason: str = ""
    retracted: int = 0
    survived: int = 0
    unverified_emitted: int = 0
    reconnects: int = 0
    restarts: int = 0

    def emit(self, event: StreamEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def commit(self, new: list[int]) -> None:
        """Append verified tokens, reconciling them with the unverified ones already shown."""
        shown = self.provisional
        matched = 0
        while matched < min(len(shown), len(new)) and shown[matched] == new[matched]:
            matched += 1
        if matched:
            self.emit(StreamEvent.confirm(new[:matched]))
            self.survived += matched
        if matched < len(shown) and matched < len(new):
            self.emit(StreamEvent.retract(shown[matched:]))
            self.retracted += len(shown) - matched
            self.provisional = []
        else:
            self.provisional = shown[matched:]
        if matched < len(new):
            self.emit(StreamEvent.tokens(new[matched:], verified=True))
        super().commit(new)

    def finish(self, reason: str | None) -> None:
        super().finish(reason)
        if self.provisional:  # shown but never verified: the generation ended before them
            self.emit(StreamEvent.retract(self.provisional))
            self.retracted += len(self.provisional)
            self.provisional = []


class EdgeClient:
    def __init__(
        self,
        url: str,
        draft: DraftEngine,
        *,
        tokenizer: Any = None,
        api_key: str | None = None,
        window: int | None = 4,
        preempt: bool = True,
        optimistic: bool = True,
        optimistic_min: float = 0.2,
        early_trust: float = 0.5,
        exits: Sequence[int] | None = None,
        fallback: Literal["wait", "continue"] = "wait",
        fallback_budget_s: float = 1.0,
        max_unverified: int = 64,
        verdict_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 60.0,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        open_timeout: float = 10.0,
        max_retries: int = 3,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = _speculate_url(url)
        self.draft = draft
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.window = window
        self.preempt = preempt
        self.optimistic = optimistic
        # Optimistic pre-drafting pays only when a window is often fully accepted.
        self.optimistic_min = optimistic_min
        self.early_trust = early_trust
        self.exits = list(exits) if exits is not None else None
        self.fallback = fallback
        self.fallback_budget_s = fallback_budget_s
        self.max_unverified = max_unverified
        self.verdict_timeout_s = verdict_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout = open_timeout
        # Per generation: `retryable` errors resent, and generations the server ended restarted.
        self.max_retries = max_retries
        self.ssl_context = ssl_context  # for wss:// with a private CA (None: the system's trust store)
        self.ws: ClientConnection | None = None
        self.welcome: Welcome | None = None
        self.windows: AdaptiveWindow | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    async def __aenter__(self) -> EdgeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> Welcome:
        await self.close()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            self.ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                max_size=None,
                compression=None,
                **(
                    {"ssl": self.ssl_context}
                    if self.ssl_context is not None and self.url.startswith("wss")
                    else {}
                ),
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):  # final: retrying cannot help
                raise EdgeError(
                    "unauthorized", f"the server refused the API key (HTTP {exc.response.status_code})"
                ) from exc
            raise
        hello = Hello(
            vocab_hash=vocab_hash(self.tokenizer) if self.tokenizer is not None else None, exits=self.exits
        )
        await self._send(hello.model_dump(mode="json", exclude_none=True))
        self.welcome = await self._expect(Welcome, timeout=self.open_timeout)
        return self.welcome

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self.ws = None

    async def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] | None = None,
        on_event: EventCallback | None = None,
        grammar: GrammarSpec | Mapping[str, Any] | None = None,
        images: Sequence[Image.Image | ImagePayload] = (),
    ) -> GenerationResult:
        """`grammar` ({"json_schema": {...}} | {"regex": ...} | {"lark": ...}) constrains the output.
        `images`: one per image of the prompt (laid out by the processor); the draft prefills them and
        every `start` carries them."""
        spec = parse_grammar(grammar)
        payloads = [i if isinstance(i, ImagePayload) else payload_from_image(i) for i in images]
        # The draft sees exactly the pixels the server decodes from the payloads.
        self.draft.set_images([decode_payload(p, 1 << 62) for p in payloads], prompt_ids)
        gen = _Generation(
            prompt=list(prompt_ids),
            sampling=sampling or SamplingParams(),
            max_tokens=max_tokens,
            stop=list(stop) if stop else None,
            on_event=on_event,
            grammar=spec,
            images=payloads,
            draft_grammar=self.draft.grammar_for(spec, len(prompt_ids), self.tokenizer),
            committed=list(prompt_ids),
        )
        stats = PredraftStats()
        t_start = time.perf_counter()
        up0, down0 = self.bytes_up, self.bytes_down
        max_window = self.welcome.limits.max_window if self.welcome else 16
        # The window model outlives a request: acceptance, drafting, verify and RTT belong to the link.
        if self.windows is None or self.windows.max_window != max_window:
            self.windows = AdaptiveWindow(max_window, fixed=self.window, initial=min(4, max_window))
        windows = self.windows
        predrafter = Predrafter(self.draft, windows.initial, gen.sampling, stats, gen.draft_grammar)
        retries = 0
        try:
            while not gen.finished:
                try:
                    if self.ws is None:
                        raise LinkLost("not connected")
                    if not gen.started:
                        await self._start(gen, gen.prompt, gen.max_tokens)
                    else:
                        await self._round(gen, windows, predrafter)
                except LinkLost as exc:
                    log.info("link lost (%s); recovering", exc)
                    await predrafter.stop()
                    await self._recover(gen)
                except EdgeError as exc:
                    # Only an error the server says is safe to retry, or one that ended the generation
                    # server-side (`internal`, not retryable: restart from the committed tokens).
                    restartable = exc.code == "internal" and gen.started
                    if not (exc.retryable or restartable) or retries >= self.max_retries:
                        raise
                    retries += 1
                    await predrafter.stop()
                    gen.next_window = None
                    if exc.retryable:
                        log.info("retrying after %s (%d/%d)", exc.code, retries, self.max_retries)
                        if gen.started:
                            gen.abandon_round(resend=True)  # the server rolled the round back
                        await asyncio.sleep(min(self.backoff_s * 2**retries, self.backoff_max_s))
                    else:
                        log.info("the server ended the generation (%s); restarting", exc.message)
                        await self._restart(gen)
        finally:
            # Every exit path (an error, a cancellation): no draft thread may outlive this call, or it
            # would write the shared draft cache while the next generate() drafts on it.
            await predrafter.stop()
        m = gen.metrics
        m.draft_s += predrafter.draft_s
        m.predraft_started = sum(stats.started.values())
        m.predraft_hits = sum(stats.hits.values())
        m.total_s = time.perf_counter() - t_start
        m.generated_tokens = len(gen.generated)
        result = GenerationResult(token_ids=gen.generated, finish_reason=gen.finish_reason, metrics=m)
        result.extra = {
            "predraft_by_source": {
                s: {"started": n, "hits": stats.hits.get(s, 0)} for s, n in stats.started.items()
            },
            "rtt_ms_p50": statistics.median(gen.rtts_ms) if gen.rtts_ms else None,
            "rtt_ms_p95": _percentile(gen.rtts_ms, 95) if gen.rtts_ms else None,
            "bytes_up": self.bytes_up - up0,
            "bytes_down": self.bytes_down - down0,
            "windows": gen.windows,
            "window_reason": gen.window_reason,
            "unverified_emitted": gen.unverified_emitted,
            "unverified_survived": gen.survived,
            "retracted": gen.retracted,
            "reconnects": gen.reconnects,
            "restarts": gen.restarts,
        }
        return result

    async def _start(
        self,
        gen: _Generation,
        token_ids: list[int],
        max_tokens: int,
        sampling: SamplingParams | None = None,
        generated: int = 0,
    ) -> None:
        start = Start(
            token_ids=token_ids,
            sampling=sampling or gen.sampling,
            max_tokens=max_tokens,
            stop=gen.stop,
            generated=generated,
            grammar=gen.grammar.model_dump(exclude_none=True) if gen.grammar is not None else None,
            images=gen.images or None,
        )
        await self._send(start.model_dump(mode="json", exclude_none=True))
        started = await self._expect(Started, timeout=self.verdict_timeout_s)
        gen.started = True
        gen.session_id = self.welcome.session_id if self.welcome else None
        gen.on_started(started)

    async def _round(self, gen: _Generation, windows: AdaptiveWindow, predrafter: Predrafter) -> None:
        choice = windows.choose()
        gen.window_reason = choice.reason
        # Near max_tokens a shorter window verifies the same: the verdict adds one token of its own.
        k = max(1, min(choice.k, gen.max_tokens - len(gen.generated) - 1))
        predrafter.k = k
        window, gen.next_window = gen.next_window, None
        if window is None or tuple(window.prefix) != tuple(gen.committed):
            window = await draft_off_loop(self.draft, gen.committed, k, gen.sampling, gen.draft_grammar)
            gen.metrics.draft_s += window.draft_s
        k = len(window.tokens)  # a pre-drafted window keeps the size chosen when it was drafted
        gen.windows.append(k)
        message = gen.open_round(window)
        t_sent = time.perf_counter()
        await self._send(message.model_dump(mode="json", exclude_none=True))
        if self.preempt and self.optimistic and windows.full_acceptance(k) >= self.optimistic_min:
            guess = Hypothesis((*window.prefix, *window.tokens), "optimistic", rank=0.0, guess_next=True)
            await predrafter.request(guess)
        verdict = await self._await_verdict(gen, window, predrafter)
        wait_s = time.perf_counter() - t_sent
        gen.metrics.verify_wait_s += wait_s
        rtt_ms = max(0.0, wait_s * 1000.0 - verdict.server_ms)
        gen.rtts_ms.append(rtt_ms)
        windows.observe(
            k,
            verdict.accepted,
            window.draft_s / k if window.draft_s else None,
            verdict.verify_ms / 1e3,
            rtt_ms / 1e3,
            verdict.server_load,
        )
        gen.close_round(verdict)
        if gen.finished:
            return
        gen.next_window = await predrafter.settle(tuple(gen.committed))

    async def _await_verdict(self, gen: _Generation, window: DraftWindow, predrafter: Predrafter) -> Verdict:
        unverified: _UnverifiedDrafting | None = None
        deadline = time.monotonic() + self.verdict_timeout_s
        try:
            while True:
                budget = deadline - time.monotonic()
                if self.fallback == "continue" and unverified is None:
                    budget = min(budget, self.fallback_budget_s)
                try:
                    frame = await self._receive(timeout=max(budget, 0.0))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise LinkLost("no verdict within verdict_timeout_s") from None
                    # Slower than the budget: keep generating on the edge, marked unverified.
                    await predrafter.stop()
                    unverified = _UnverifiedDrafting(self, gen, list(window.tokens))
                    continue
                if isinstance(frame, Early) and gen.note_early(frame):
                    if self.preempt and unverified is None:
                        prefix = (*window.prefix, *window.tokens[: frame.accepted], frame.token)
                        # A confident exit outranks the optimistic guess; a deeper exit outranks a shallower.
                        rank = frame.layer if frame.confidence >= self.early_trust else 0.0
                        await predrafter.request(Hypothesis(prefix, f"early@{frame.layer}", rank))
                elif isinstance(frame, Verdict) and frame.round == gen.round_no:
                    return frame
        finally:
            if unverified is not None:
                await unverified.stop()

    async def _recover(self, gen: _Generation) -> None:
        """Reconnect with backoff, then resume the session (or restart from the committed tokens)."""
        await self.close()
        gen.abandon_round()
        unverified = None
        deadline = time.monotonic() + self.reconnect_timeout_s
        delay = self.backoff_s
        try:
            while True:
                try:
                    await self.connect()
                    gen.reconnects += 1
                    if unverified is not None:
                        await unverified.stop()  # the draft model must be idle before anything commits
                        unverified = None
                    if not gen.started:
                        return  # the loop sends `start` again
                    if await self._resume(gen):
                        return
                    await self._restart(gen)
                    return
                except (LinkLost, *LINK_ERRORS, EdgeError) as exc:
                    if isinstance(exc, EdgeError) and not exc.retryable:
                        raise  # e.g. unauthorized, vocab_mismatch: retrying cannot help
                    await self.close()
                    if time.monotonic() + delay > deadline:
                        message = f"could not reconnect within {self.reconnect_timeout_s} s: {exc}"
                        raise EdgeError("unreachable", message) from exc
                    if unverified is None and self.fallback == "continue" and gen.started:
                        unverified = _UnverifiedDrafting(self, gen, [])
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff_max_s)
        finally:
            if unverified is not None:
                await unverified.stop()

    async def _resume(self, gen: _Generation) -> bool:
        """Resume the detached session; False when the server no longer has it."""
        if gen.session_id is None:
            return False
        resume = Resume(
            session_id=gen.session_id,
            committed_len=len(gen.committed),
            committed_hash=ids_hash(gen.committed),
        )
        await self._send(resume.model_dump(mode="json"))
        try:
            resumed = await self._expect(Resumed, timeout=self.verdict_timeout_s)
        except EdgeError as exc:
            if exc.code == "session_not_found":
                return False
            raise
        gen.round_no = resumed.round - 1
        if resumed.tail:
            gen.commit(list(resumed.tail))
        if resumed.finished:
            gen.finish(resumed.finish_reason)
        return True

    async def _restart(self, gen: _Generation) -> None:
        """The server lost or ended the session: start again from the committed tokens (exact: greedy
        continues identically, and sampling continues from the target's own distribution).

        The restarted generation's seed is derived from (seed, committed length), so its uniforms are not
        the ones the first start drew again; `generated` tells the server which committed tokens are
        output already, so stop strings that span the restart and `max_tokens` count them.
        """
        gen.restarts += 1
        sampling = gen.sampling.model_copy(
            update={"seed": restart_seed(gen.sampling.seed, len(gen.committed))}
        )
        await self._start(gen, list(gen.committed), gen.max_tokens, sampling, generated=len(gen.generated))

    async def _send(self, payload: dict[str, Any]) -> None:
        if self.ws is None:
            raise LinkLost("not connected")
        text = json.dumps(payload, separators=(",", ":"))
        try:
            await self.ws.send(text)
        except LINK_ERRORS as exc:
            raise LinkLost(str(exc)) from exc
        self.bytes_up += len(text.encode())

    async def _receive(self, timeout: float | None = None) -> Any:
        if self.ws is None:
            raise LinkLost("not connected")
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            raise
        except (ConnectionClosed, OSError) as exc:
            raise LinkLost(str(exc)) from exc
        self.bytes_down += len(text) if isinstance(text, bytes) else len(text.encode())
        frame = MESSAGE_ADAPTER.validate_json(text)
        if isinstance(frame, Error):
            raise EdgeError(frame.code, frame.message, frame.retryable)
        return frame

    async def _expect(self, kind: type, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frame = await self._receive(timeout=remaining)
            except TimeoutError:
                raise LinkLost(f"no {kind.__name__.lower()} within {timeout} s") from None
            if isinstance(frame, kind):
                return frame


class _UnverifiedDrafting:
    """Edge-only generation in the background: shows the window in flight, then drafts one token at a
    time after everything shown. Stopped cooperatively: the draft model runs on a thread and has one KV
    cache, so it must be idle before anyone drafts or commits again."""

    def __init__(self, client: EdgeClient, gen: _Generation, in_flight: list[int]) -> None:
        self.client, self.gen = client, gen
        self.halt = threading.Event()
        if not gen.provisional and in_flight:
            gen.provisional = list(in_flight)
            gen.unverified_emitted += len(in_flight)
            gen.emit(StreamEvent.tokens(list(in_flight), verified=False))
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        gen, client = self.gen, self.client
        while not self.halt.is_set():
            shown = len(gen.generated) + len(gen.provisional)
            if len(gen.provisional) >= client.max_unverified or shown >= gen.max_tokens:
                return
            prefix = gen.committed + gen.provisional
            window = await asyncio.to_thread(
                client.draft.draft, prefix, 1, gen.sampling, self.halt, gen.draft_grammar
            )
            if window is None or self.halt.is_set():
                return
            gen.metrics.draft_s += window.draft_s
            gen.provisional.append(window.tokens[0])
            gen.unverified_emitted += 1
            gen.emit(StreamEvent.tokens([window.tokens[0]], verified=False))

    async def stop(self) -> None:
        self.halt.set()
        await asyncio.shield(self.task)  # a cancelled caller must not cancel the task under its thread


async def draft_off_loop(
    engine: DraftEngine,
    prefix: Sequence[int],
    k: int,
    sampling: SamplingParams,
    grammar: DraftGrammar | None = None,
) -> DraftWindow:
    """`engine.draft` on a thread; a cancelled caller stops the draft and waits for the thread, so no
    draft outlives the generation that asked for it."""
    cancel = threading.Event()
    future = asyncio.ensure_future(asyncio.to_thread(engine.draft, prefix, k, sampling, cancel, grammar))
    try:
        window = await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.wait([future])
        raise
    assert window is not None  # only a cancelled draft is None
    return window


def restart_seed(seed: int, committed_len: int) -> int:
    """The seed of a generation restarted after `committed_len` committed ids: fresh uniforms, still a
    pure function of the request (the same restart gives the same output)."""
    digest = hashlib.sha256(struct.pack("<qq", seed, committed_len) + b"restart").digest()
    return int.from_bytes(digest[:8], "little") >> 2  # within SamplingParams' seed range


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
    client_keys = {
        "tokenizer",
        "api_key",
        "window",
        "preempt",
        "optimistic",
        "early_trust",
        "exits",
        "fallback",
    }
    client_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in client_keys}

    async def run() -> GenerationResult:
        async with EdgeClient(url, draft, **client_kwargs) as client:
            return await client.generate(prompt_ids, **kwargs)

    return asyncio.run(run())
