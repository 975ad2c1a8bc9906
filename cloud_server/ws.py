"""`/v1/speculate`: protocol 1 over a websocket (DESIGN.md, "Decoding protocol").

Frames are handled in order. A draft's forward runs on the inference worker; its exit callback (on the
worker thread) hands `early` frames to the event loop, whose sender task writes them while the forward
pass continues. The verdict is queued after them, so frames leave in protocol order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from cloud_server.engine import EngineLimits, TargetSession
from cloud_server.state import ANONYMOUS, ServerState, Slot
from shared.errors import ProtocolError
from shared.hashing import ids_hash
from shared.images import decode_payloads, expand_image_chat, expand_image_prompt
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
RESUME_WAIT_S = 2.0


@router.websocket("/v1/speculate")
async def speculate(websocket: WebSocket) -> None:
    """Auth and `Origin` are checked by the app's middleware before this runs (one rule for all routes)."""
    state: ServerState = websocket.app.state.eespec
    if not state.ready or state.draining:
        # 503, not the 403 a plain close-before-accept gives: the client must retry, not give up.
        code, message = (
            ("loading", "the model is loading")
            if not state.ready
            else ("shutting_down", "the server is shutting down")
        )
        await websocket.send_denial_response(
            JSONResponse({"error": {"code": code, "message": message}}, status_code=503)
        )
        return
    owner = websocket.scope.get("state", {}).get("eespec_owner", ANONYMOUS)
    await websocket.accept()
    await Connection(websocket, state, owner).serve()


class Connection:
    """One socket: at most one session, its frames in order, and a sender task for outgoing frames.

    A reader task receives frames into a small inbox (backpressure beyond it) and notices a disconnect
    at once, even while a frame's work is queued on the worker: the frame task is then cancelled, which
    drops work that has not started and waits for work that has, before the session is detached.
    """

    INBOX = 8

    def __init__(self, websocket: WebSocket, state: ServerState, owner: str = ANONYMOUS) -> None:
        self.ws = websocket
        self.state = state
        self.owner = owner
        self.loaded = state.loaded
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.session_id: str | None = None
        self.session: TargetSession | None = None
        self.slot: Slot | None = None
        self.exits: list[int] | None = None
        self.logged_client_error = False
        self.logged_internal_error = False
        self.close_code: int | None = None

    async def serve(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(self.INBOX)
        reader = asyncio.create_task(self._read_loop(inbox))
        worker = asyncio.create_task(self._frame_loop(inbox))
        try:
            await asyncio.wait([reader, worker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            worker.cancel()
            await asyncio.gather(reader, worker, return_exceptions=True)
            self._end_session()
            await self.outbox.put(None)
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(sender, 5.0)
            sender.cancel()
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=self.close_code)

    def _end_session(self) -> None:
        if self.session_id is not None:
            self.state.sessions.detach(self.session_id)
        elif self.session is not None:
            self.session.close()
        if self.slot is not None:
            self.slot.release()
        self.state.refresh_gauges()

    async def _read_loop(self, inbox: asyncio.Queue[str | bytes | None]) -> None:
        """Frames into the inbox until the peer leaves or stays silent too long."""
        settings = self.state.settings
        while True:
            timeout = settings.hello_timeout_s if self.session is None else settings.idle_timeout_s
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except TimeoutError:
                self.close_code = 1001  # going away: the session stays resumable for ttl_s
                return
            except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the socket is already closed
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            await inbox.put(text if text is not None else message.get("bytes") or b"")

    async def _frame_loop(self, inbox: asyncio.Queue[str | bytes | None]) -> None:
        while True:
            frame = await inbox.get()
            try:
                if not isinstance(frame, str):
                    raise ProtocolError("bad_frame", "frames must be JSON text")
                await self._handle(frame)
            except ProtocolError as exc:
                self._log_error(exc)
                self._send_error(exc)
            except Exception:
                # Not a promise of a safe retry: the generation ends; the edge restarts from its tokens.
                if not self.logged_internal_error:
                    self.logged_internal_error = True
                    log.exception("internal error on a frame")
                if self.session is not None:
                    self.session.close()
                self._send_error(ProtocolError("internal", "internal server error; the generation ended"))

    def _log_error(self, exc: ProtocolError) -> None:
        """Client mistakes once per connection (a flood of bad frames must not flood the log); engine
        failures with their cause."""
        if exc.code == "internal":
            if not self.logged_internal_error:
                self.logged_internal_error = True
                log.error("engine error: %s", exc.message, exc_info=exc.__cause__ or exc)
        elif not self.logged_client_error:
            self.logged_client_error = True
            log.info("client error on a connection (later ones are not logged): %s", exc)

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
        if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
            raise ProtocolError("too_large", f"frame larger than max_frame_bytes ({limit})")
        raw = parse_json_object(text)
        kind = raw["type"]
        if kind not in KNOWN_TYPES:
            raise ProtocolError("unknown_type", "unknown message type")
        if kind not in CLIENT_TYPES:
            raise ProtocolError("bad_frame", f"{kind!r} is sent by the server, not to it")
        try:
            message = MESSAGE_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            round_no = raw.get("round") if type(raw.get("round")) is int else None
            raise ProtocolError(
                "bad_frame", f"invalid {kind}: {validation_detail(exc)}", round=round_no
            ) from exc
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
        self.slot = self.state.acquire_slot(self.owner)
        settings = self.state.settings
        self.session = TargetSession(
            loaded.early_exit,
            eos_ids=loaded.eos_ids,
            tokenizer=loaded.tokenizer,
            limits=EngineLimits(
                settings.max_prompt_tokens,
                settings.max_tokens,
                settings.max_window,
                settings.prefill_chunk_tokens or None,
            ),
            processor=loaded.processor,
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
                server_id=self.state.server_id,
            )
        )

    async def _prompt_ids(self, start: Start, images: list[Any]) -> list[int]:
        tokenizer = self.loaded.tokenizer
        given = [x is not None for x in (start.token_ids, start.prompt, start.messages)]
        if sum(given) != 1:
            raise ProtocolError("bad_frame", "start needs exactly one of token_ids, prompt, messages")
        if start.token_ids is not None:
            return start.token_ids
        # Text work off the event loop (it also sends other sessions' early frames).
        if images:  # the text's image placeholders, expanded by the target's processor
            processor = self.loaded.processor
            if start.prompt is not None:
                return await asyncio.to_thread(expand_image_prompt, processor, start.prompt, images)
            chat = [m.model_dump() for m in start.messages]
            return await asyncio.to_thread(expand_image_chat, processor, tokenizer, chat, images)
        if start.prompt is not None:
            return await asyncio.to_thread(lambda: list(tokenizer(start.prompt).input_ids))
        chat = [m.model_dump() for m in start.messages]
        return await asyncio.to_thread(chat_prompt_ids, tokenizer, chat)

    async def _images(self, start: Start) -> list[Any]:
        """The start's images, decoded and checked off the event loop (before any model work)."""
        if not start.images:
            return []
        if self.loaded.processor is None:
            raise ProtocolError("bad_image", f"{self.loaded.name} takes no images")
        settings = self.state.settings
        return await asyncio.to_thread(
            decode_payloads, start.images, max_images=settings.max_images, max_bytes=settings.max_image_bytes
        )

    async def _start(self, start: Start) -> None:
        images = await self._images(start)
        prompt = await self._prompt_ids(start, images)
        self.state.metrics.requests.labels(route="speculate").inc()
        started = await self.state.worker.run_stepwise(
            self.session.start_stepwise(
                prompt,
                start.sampling,
                start.max_tokens,
                start.stop,
                start.generated,
                start.grammar,
                images,
            )
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

        verdict = await self.state.worker.verify(self.session, draft, on_early, self.exits)
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
        sessions = self.state.sessions
        # A resume can overtake the server's noticing that the old socket is gone (its round may still be
        # on the worker): give the old connection a moment to detach rather than lose the session.
        deadline = time.monotonic() + RESUME_WAIT_S
        while resume.session_id in sessions.active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # Taken out of the store before any await: an expiry or a second resume meanwhile finds nothing.
        record = sessions.take_detached(resume.session_id)
        if record is None:
            raise ProtocolError("session_not_found", "no detached session with that id (expired or unknown)")
        n = resume.committed_len
        if not 0 < n <= len(record.committed) or ids_hash(record.committed[:n]) != resume.committed_hash:
            self.state.sessions.put_back(record)
            raise ProtocolError("session_not_found", "committed_hash matches no prefix the server holds")
        t0 = time.perf_counter()
        try:
            await self.state.worker.run_stepwise(self.session.restore_stepwise(record))
        except BaseException:
            self.state.sessions.put_back(record)  # still resumable, by this socket or another
            raise
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


def parse_json_object(text: str) -> dict[str, Any]:
    """A frame's JSON object with a string `type`; every way JSON can fail is the client's `bad_frame`
    (nesting too deep for the parser, integers over Python's digit limit, invalid escapes)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_frame", f"not JSON: {exc.msg}") from exc
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_frame", "JSON too deeply nested or with a number too long") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ProtocolError("bad_frame", "a frame is a JSON object with a string `type`")
    return raw


def validation_detail(exc: ValidationError) -> str:
    """Pydantic's messages for the first errors (never the rejected values, which may be huge)."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])


def chat_prompt_ids(tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """The chat template's prompt ids; a template that rejects the messages is the client's mistake."""
    if not getattr(tokenizer, "chat_template", None):
        raise ProtocolError("bad_frame", "the model's tokenizer has no chat template; send token_ids")
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as exc:  # templates raise on roles or orders they do not support
        raise ProtocolError("bad_frame", "the chat template rejected the messages") from exc
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]
