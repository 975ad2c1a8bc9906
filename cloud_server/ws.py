"""`/v1/speculate`: protocol 1 over a websocket (DESIGN.md, "Decoding protocol").

Frames are handled in order. A draft's forward runs on the inference worker; its exit callback (on the
worker thread) hands `early` frames to the event loop, whose sender task writes them while the forward
pass continues. The verdict is queued after them, so frames leave in protocol order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from cloud_server.engine import EngineLimits, TargetSession
from cloud_server.state import ServerState
from shared.errors import ProtocolError
from shared.hashing import ids_hash
from shared.protocol import (
    MESSAGE_ADAPTER,
    PROTOCOL_VERSION,
    Cancel,
    Cancelled,
    Draft,
    Early,
    Error,
    Hello,
    Ping,
    Pong,
    Resume,
    Resumed,
    Start,
    Welcome,
)

router = APIRouter()
log = logging.getLogger("eespec.server.ws")
KNOWN_TYPES = frozenset(
    {"hello", "welcome", "start", "started", "draft", "early", "verdict", "cancel", "cancelled", "resume"}
    | {"resumed", "ping", "pong", "error"}
)
CLIENT_TYPES = frozenset({"hello", "start", "draft", "cancel", "resume", "ping"})


@router.websocket("/v1/speculate")
async def speculate(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.eespec
    if not state.authorized(websocket.headers.get("authorization")):
        state.metrics.errors.labels(code="unauthorized").inc()
        await websocket.close(code=1008)  # before accept: the upgrade is answered with HTTP 403
        return
    if not state.ready:
        # 503, not the 403 a plain close-before-accept gives: the client must retry, not give up.
        await websocket.send_denial_response(
            JSONResponse({"error": {"code": "loading", "message": "the model is loading"}}, status_code=503)
        )
        return
    await websocket.accept()
    await Connection(websocket, state).serve()


class Connection:
    """One socket: at most one session, its frames in order, and a sender task for outgoing frames."""

    def __init__(self, websocket: WebSocket, state: ServerState) -> None:
        self.ws = websocket
        self.state = state
        self.loaded = state.loaded
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.session_id: str | None = None
        self.session: TargetSession | None = None
        self.exits: list[int] | None = None

    async def serve(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            while True:
                try:
                    text = await self.ws.receive_text()
                except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the socket is already closed
                    break
                except KeyError:  # a binary frame
                    self._send_error(ProtocolError("bad_frame", "frames must be JSON text"))
                    continue
                try:
                    await self._handle(text)
                except ProtocolError as exc:
                    self._send_error(exc)
                except Exception as exc:
                    log.exception("internal error on a frame")
                    self._send_error(ProtocolError("internal", f"{type(exc).__name__}: {exc}"))
        finally:
            if self.session_id is not None:
                self.state.sessions.detach(self.session_id)
            self.state.refresh_gauges()
            await self.outbox.put(None)
            sender.cancel()

    async def _send_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            if frame is None:
                return
            try:
                await self.ws.send_text(json.dumps(frame, separators=(",", ":")))
            except Exception:  # the peer is gone; the receive loop notices and cleans up
                return

    def _send(self, message: BaseModel) -> None:
        self.outbox.put_nowait(message.model_dump(mode="json"))

    def _send_error(self, exc: ProtocolError) -> None:
        self.state.metrics.errors.labels(code=exc.code).inc()
        self._send(Error(code=exc.code, message=exc.message, retryable=exc.retryable, round=exc.round))

    async def _handle(self, text: str) -> None:
        limit = self.state.settings.max_frame_bytes
        if len(text) > limit or len(text.encode()) > limit:
            raise ProtocolError("too_large", f"frame larger than max_frame_bytes ({limit})")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError("bad_frame", f"not JSON: {exc.msg}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise ProtocolError("bad_frame", "a frame is a JSON object with a string `type`")
        kind = raw["type"]
        if kind not in KNOWN_TYPES:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
        if kind not in CLIENT_TYPES:
            raise ProtocolError("bad_frame", f"{kind!r} is sent by the server, not to it")
        try:
            message = MESSAGE_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            round_no = raw.get("round") if isinstance(raw.get("round"), int) else None
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise ProtocolError("bad_frame", f"invalid {kind}: {detail}", round=round_no) from exc
        if isinstance(message, Ping):
            self._send(Pong())
        elif isinstance(message, Hello):
            self._hello(message)
        elif self.session is None:
            raise ProtocolError("bad_frame", "send hello first")
        elif isinstance(message, Start):
            await self._start(message)
        elif isinstance(message, Draft):
            await self._draft(message)
        elif isinstance(message, Cancel):
            self.session.close()
            self._send(Cancelled())
            self.state.refresh_gauges()
        elif isinstance(message, Resume):
            await self._resume(message)

    def _hello(self, hello: Hello) -> None:
        if self.session is not None:
            raise ProtocolError("bad_frame", "hello was already received on this socket")
        if hello.protocol != PROTOCOL_VERSION:
            raise ProtocolError("bad_frame", f"protocol {hello.protocol} unsupported; this server speaks 1")
        loaded = self.loaded
        if hello.vocab_hash is not None and hello.vocab_hash != loaded.vocab_hash:
            raise ProtocolError(
                "vocab_mismatch", f"server vocab_hash is {loaded.vocab_hash}, edge sent {hello.vocab_hash}"
            )
        available = list(loaded.early_exit.exit_layers)
        if hello.exits is not None:
            unknown = sorted(set(hello.exits) - set(available))
            if unknown:
                raise ProtocolError("bad_frame", f"exits {unknown} not served; available: {available}")
            self.exits = sorted(set(hello.exits))
        if not self.state.sessions.can_admit():
            raise ProtocolError(
                "limit_exceeded", f"server at max_sessions ({self.state.settings.max_sessions})"
            )
        settings = self.state.settings
        self.session = TargetSession(
            loaded.early_exit,
            eos_ids=loaded.eos_ids,
            tokenizer=loaded.tokenizer,
            limits=EngineLimits(settings.max_prompt_tokens, settings.max_tokens, settings.max_window),
        )
        self.session_id = self.state.sessions.new_id()
        self.state.sessions.add(self.session_id, self.session)
        self.state.refresh_gauges()
        self._send(
            Welcome(
                session_id=self.session_id,
                model=loaded.name,
                vocab_hash=loaded.vocab_hash,
                exit_layers=self.exits if self.exits is not None else available,
                limits=settings.limits(),
            )
        )

    def _prompt_ids(self, start: Start) -> list[int]:
        tokenizer = self.loaded.tokenizer
        given = [x is not None for x in (start.token_ids, start.prompt, start.messages)]
        if sum(given) != 1:
            raise ProtocolError("bad_frame", "start needs exactly one of token_ids, prompt, messages")
        if start.token_ids is not None:
            return start.token_ids
        if start.prompt is not None:
            return list(tokenizer(start.prompt).input_ids)
        chat = [m.model_dump() for m in start.messages]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if not isinstance(ids, list) else ids)

    async def _start(self, start: Start) -> None:
        prompt = self._prompt_ids(start)
        self.state.metrics.requests.labels(route="speculate").inc()
        started = await self.state.worker.run(
            self.session.start,
            prompt,
            start.sampling,
            start.max_tokens,
            start.stop,
            start.grammar,
            start.grammar_consumed,
        )
        self.state.metrics.prefill_seconds.observe(started.server_ms / 1000.0)
        self.state.metrics.generated_tokens.labels(mode="speculative").inc()
        self.state.refresh_gauges()
        self._send(started)

    async def _draft(self, draft: Draft) -> None:
        loop = asyncio.get_running_loop()
        earlies: list[Early] = []

        def on_early(early: Early) -> None:  # runs on the worker thread, mid-forward
            earlies.append(early)
            loop.call_soon_threadsafe(self.outbox.put_nowait, early.model_dump(mode="json"))

        verdict = await self.state.worker.run(self.session.verify, draft, on_early, self.exits)
        self._send(verdict)
        metrics = self.state.metrics
        metrics.rounds.inc()
        metrics.draft_tokens.inc(len(draft.tokens))
        metrics.accepted_tokens.inc(verdict.accepted)
        metrics.generated_tokens.labels(mode="speculative").inc(
            verdict.accepted + (verdict.token is not None)
        )
        metrics.verify_seconds.observe(verdict.verify_ms / 1000.0)
        for early in earlies:
            metrics.early_predictions.labels(layer=str(early.layer)).inc()
            if (early.accepted, early.token) == (verdict.accepted, verdict.token):
                metrics.early_hits.labels(layer=str(early.layer)).inc()
        self.state.refresh_gauges()

    async def _resume(self, resume: Resume) -> None:
        record = self.state.sessions.detached.get(resume.session_id)
        if record is None:
            raise ProtocolError("session_not_found", "no detached session with that id (expired or unknown)")
        n = resume.committed_len
        if not 0 < n <= len(record.committed) or ids_hash(record.committed[:n]) != resume.committed_hash:
            raise ProtocolError("session_not_found", "committed_hash matches no prefix the server holds")
        t0 = time.perf_counter()
        await self.state.worker.run(self.session.restore, record)
        del self.state.sessions.detached[resume.session_id]
        # The resumed session takes over the old id so a later resume can find it again.
        self.state.sessions.active.pop(self.session_id, None)
        self.session_id = resume.session_id
        self.state.sessions.add(self.session_id, self.session)
        self.state.metrics.prefill_seconds.observe(time.perf_counter() - t0)
        self.state.refresh_gauges()
        self._send(
            Resumed(
                session_id=resume.session_id,
                committed_len=len(record.committed),
                tail=record.committed[n:],
                round=record.round + 1,
                finished=record.finished,
                finish_reason=record.finish_reason,
            )
        )
