"""OpenAI-compatible routes: the target alone, autoregressively — the cloud-only baseline.

`POST /v1/completions`, `POST /v1/chat/completions` (SSE when `stream: true`) and `GET /v1/models`.
Usage carries timing (`ttft_ms`, `ms_per_token`, `total_ms`) but no speculative fields. Errors are
OpenAI-shaped, `{"error": {"message", "type", "code"}}`, with the protocol's stable codes; a malformed
body answers 400 `bad_frame` (not FastAPI's 422). Auth is the app's middleware.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.types import Receive, Scope, Send

from cloud_server.engine import AutoregressiveGeneration, LoadedTarget
from cloud_server.state import ANONYMOUS, ServerState, Slot, SlotsFull
from cloud_server.ws import chat_prompt_ids, validation_detail
from shared.errors import ProtocolError
from shared.grammar import GrammarMatcher, GrammarSpec, grammar_compiler, parse_grammar
from shared.images import decode_payloads, expand_image_chat, payload_from_data_url
from shared.protocol import StopList, StopString, Text
from shared.sampling import SamplingParams, Seed, Temperature, TopK, TopP
from shared.stopping import StopStrings
from shared.vlm import VisionInputs, image_placeholder_text, text_config

router = APIRouter()
log = logging.getLogger("eespec.server.http")
MODE = "autoregressive"
# OpenAI clients back off on 429 and 503; 413 says the body itself is too big.
_STATUS = {"internal": 500, "too_large": 413}
_CREATED = int(time.time())


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: `text`, `json_object` (any JSON object) or `json_schema`."""

    model_config = ConfigDict(extra="ignore")

    type: str
    json_schema: JsonSchemaFormat | None = None

    def grammar(self) -> GrammarSpec | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return GrammarSpec(json_schema={"type": "object"})
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.json_schema is None:
                raise ProtocolError("bad_grammar", "response_format json_schema needs json_schema.schema")
            return parse_grammar({"json_schema": self.json_schema.json_schema})
        raise ProtocolError("bad_grammar", f"unsupported response_format type {self.type!r}")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None  # our extension (OpenAI has none); 0 = off
    seed: Seed | None = None
    stop: StopString | StopList | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    response_format: ResponseFormat | None = None
    grammar: dict[str, Any] | None = None  # our extension: the protocol's `start.grammar`

    def grammar_spec(self) -> GrammarSpec | None:
        """The grammar the output must follow, from `response_format` or `grammar` (`bad_grammar`)."""
        from_format = self.response_format.grammar() if self.response_format is not None else None
        if from_format is not None and self.grammar is not None:
            raise ProtocolError("bad_grammar", "give response_format or grammar, not both")
        return from_format if from_format is not None else parse_grammar(self.grammar)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=secrets.randbits(62) if self.seed is None else self.seed,
        )

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionBody(_Body):
    prompt: Text | list[int]
    max_tokens: int | None = Field(16, ge=1)
    echo: Literal[False] = False
    logprobs: None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: Text


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str  # a data: URL (nothing is ever fetched)


class ImageUrlPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImageUrlPart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Text
    content: Text | list[ContentPart] | None = None

    def template_dict(self, image_text: str = "") -> dict[str, str]:
        """The message for the chat template; each image part becomes `image_text` (the processor's
        placeholder, expanded after templating)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text if isinstance(part, TextPart) else image_text for part in content)
        return {"role": self.role, "content": content or ""}

    def image_urls(self) -> list[str]:
        if not isinstance(self.content, list):
            return []
        return [part.image_url.url for part in self.content if isinstance(part, ImageUrlPart)]


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = None


def add_request_bodies(openapi: dict[str, Any]) -> dict[str, Any]:
    """Document the POST bodies in the OpenAPI schema (the routes parse them themselves, to answer
    `bad_frame` 400 rather than FastAPI's 422), so clients and schema-driven fuzzers see them."""
    bodies = {"/v1/completions": CompletionBody, "/v1/chat/completions": ChatBody}
    refs, top = models_json_schema(
        [(model, "validation") for model in bodies.values()], ref_template="#/components/schemas/{model}"
    )
    openapi.setdefault("components", {}).setdefault("schemas", {}).update(top.get("$defs", {}))
    for path, model in bodies.items():
        operation = openapi["paths"][path]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(model, "validation")]}},
        }
    return openapi


def visible_text(tokenizer, stops: StopStrings, ids: Sequence[int]) -> str:
    """The text the client sees for generated `ids`: special tokens skipped, cut before a stop string."""
    return stops.cut(tokenizer.decode(list(ids), skip_special_tokens=True))


class _Detokenizer:
    """Incremental detokenisation, O(1) per token: tokenizers' `DecodeStream` for fast tokenizers; for
    others the prefix/read offsets of transformers' `TextStreamer` (decode a short tail, emit what grew,
    hold back an incomplete UTF-8 sequence)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.backend = backend
        self.stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(skip_special_tokens=True)
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token: int) -> str:
        if self.stream is not None:
            return self.stream.step(self.backend, int(token)) or ""
        self.ids.append(int(token))
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""


class TextStream:
    """Incremental text for a stream: each `push` returns the text that became final.

    Decoding is incremental (`_Detokenizer`) and so is the stop scan: only the new text and the few
    characters before it that a stop string could span are searched. Text that could still turn out to
    be the start of a stop string is held back until it cannot; the text never includes a stop string.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = StopStrings(tokenizer, stops)
        self.ids: list[int] = []
        self.detok = _Detokenizer(tokenizer)
        self.text = ""  # everything decoded so far
        self.sent = 0  # characters of `text` already returned
        self.stopped_at: int | None = None  # where the first stop string begins
        self.longest_stop = max((len(s) for s in self.stops.stops), default=0)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        if self.stopped_at is not None:
            return ""
        new = self.detok.push(token)
        if new:
            scan_from = max(0, len(self.text) - self.longest_stop + 1)
            self.text += new
            hits = [i for i in (self.text.find(s, scan_from) for s in self.stops.stops) if i >= 0]
            if hits:
                self.stopped_at = min(hits)
        return self._emit(self._final_end())

    def finish(self) -> str:
        """The rest of the text once the generation has ended."""
        end = self.stopped_at if self.stopped_at is not None else len(self.text)
        return self._emit(end)

    def _final_end(self) -> int:
        if self.stopped_at is not None:
            return self.stopped_at
        return len(self.text) - self._stop_prefix_len()

    def _stop_prefix_len(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        text = self.text
        for stop in self.stops.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _emit(self, end: int) -> str:
        if end <= self.sent:
            return ""
        delta = self.text[self.sent : end]
        self.sent = end
        return delta


def error_response(status: int, code: str, message: str) -> JSONResponse:
    kind = {
        400: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        503: "service_unavailable",
    }.get(status, "server_error")
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}}, status_code=status, headers=headers
    )


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _ready(state: ServerState) -> LoadedTarget:
    if state.draining:
        raise _HttpError(503, "shutting_down", "the server is shutting down")
    if state.loaded is None:
        message = "the model failed to load" if state.load_error else "model loading"
        raise _HttpError(503, "internal", message)
    return state.loaded


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # invalid JSON or UTF-8, too deep, a number too long
        raise _HttpError(400, "bad_frame", "the body is not valid JSON (or nested too deeply)") from exc


async def _parse(request: Request, model: type[_Body]) -> Any:
    body = await request.body()  # bounded by the app's BodyLimitMiddleware before it is read
    raw = await asyncio.to_thread(_json_body, body)  # parsing off the event loop
    if not isinstance(raw, dict):
        raise _HttpError(400, "bad_frame", "the body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _HttpError(400, "bad_frame", f"invalid request: {validation_detail(exc)}") from exc


def _check_prompt(state: ServerState, loaded: LoadedTarget, prompt_ids: list[int]) -> None:
    if not prompt_ids:
        raise ProtocolError("bad_frame", "the prompt is empty")
    limit = state.settings.max_prompt_tokens
    if len(prompt_ids) > limit:
        raise ProtocolError("too_large", f"prompt of {len(prompt_ids)} tokens > max_prompt_tokens ({limit})")
    vocab = int(text_config(loaded.model.config).vocab_size)
    bad = [t for t in prompt_ids if not 0 <= t < vocab]
    if bad:
        raise ProtocolError("bad_frame", f"token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}")


def _check_max_tokens(state: ServerState, max_tokens: int) -> None:
    if max_tokens > state.settings.max_tokens:
        raise ProtocolError(
            "limit_exceeded",
            f"max_tokens {max_tokens} > the server's limit ({state.settings.max_tokens})",
            retryable=False,
        )


def _chat_prompt(tokenizer, messages: list[Message]) -> list[int]:
    return chat_prompt_ids(tokenizer, [m.template_dict() for m in messages])


def _chat_images(
    state: ServerState, loaded: LoadedTarget, messages: list[Message]
) -> tuple[list[int], VisionInputs] | None:
    """A chat with image parts: its prompt ids laid out by the target's processor and the processed
    images (`bad_image`, `too_large`, `limit_exceeded` before any model work); None without images."""
    urls = [url for m in messages for url in m.image_urls()]
    if not urls:
        return None
    processor = loaded.processor
    if processor is None:
        raise ProtocolError("bad_image", f"{loaded.name} takes no images")
    settings = state.settings
    if len(urls) > settings.max_images:
        raise ProtocolError(
            "limit_exceeded", f"{len(urls)} images > max_images ({settings.max_images})", retryable=False
        )
    payloads = [payload_from_data_url(url) for url in urls]
    images = decode_payloads(payloads, max_images=settings.max_images, max_bytes=settings.max_image_bytes)
    placeholder = image_placeholder_text(processor, 1)
    chat = [m.template_dict(placeholder) for m in messages]
    prompt_ids = expand_image_chat(processor, loaded.tokenizer, chat, images)
    return prompt_ids, VisionInputs.build(processor, loaded.model, images, prompt_ids)


def _completion_prompt(tokenizer, prompt: str) -> list[int]:
    return [int(t) for t in tokenizer(prompt).input_ids]


def _default_max_tokens(state: ServerState, loaded: LoadedTarget, prompt_len: int) -> int:
    """Chat without `max_tokens`: up to the server's limit, within the model's context when it has one."""
    limit = state.settings.max_tokens
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(context, int) and context > prompt_len:
        limit = min(limit, context - prompt_len)
    return max(1, limit)


def _grammar_matcher(loaded: LoadedTarget, spec: GrammarSpec) -> GrammarMatcher:
    vocab_size = int(text_config(loaded.model.config).vocab_size)
    return grammar_compiler(loaded.tokenizer, vocab_size=vocab_size, eos_ids=loaded.eos_ids).matcher(spec)


class _Run:
    """One request's generation, driven from the event loop with every model call on the worker."""

    def __init__(
        self,
        state: ServerState,
        loaded: LoadedTarget,
        body: _Body,
        prompt_ids: list[int],
        max_tokens: int,
        t_request: float,
        slot: Slot,
        grammar: GrammarMatcher | None = None,
        vision: VisionInputs | None = None,
    ) -> None:
        self.state = state
        self.slot = slot
        self.prompt_ids = prompt_ids
        self.vision = vision
        self.stops = body.stops()
        self.gen = AutoregressiveGeneration(
            loaded,
            body.sampling(),
            max_tokens,
            self.stops,
            grammar,
            prefill_chunk_tokens=state.settings.prefill_chunk_tokens or None,
        )
        state.http_generations.add(self.gen)
        self.text = TextStream(loaded.tokenizer, self.stops)
        self.t_request = t_request
        self.t_first: float | None = None
        self.t_last: float | None = None

    async def prefill(self) -> int:
        token = await self.state.worker.run_stepwise(self.gen.prefill_stepwise(self.prompt_ids, self.vision))
        self.state.metrics.prefill_seconds.observe(self.gen.prefill_s)
        self._count()
        return token

    async def tokens(self, first: int) -> AsyncIterator[int]:
        """`first` (already produced by `prefill`), then each further token until the generation ends."""
        yield first
        while not self.gen.finished:
            if self.state.draining:
                raise ShuttingDown
            token = await self.state.worker.step(self.gen)
            self._count()
            yield token

    async def deltas(self, first: int) -> AsyncIterator[str]:
        """The text each token makes final; detokenisation runs on the worker with the step, not on the
        event loop."""
        yield self.text.push(first)
        while not self.gen.finished:
            if self.state.draining:
                raise ShuttingDown
            delta = await self.state.worker.step(self.gen, then=self.text.push)
            self._count()
            yield delta

    def _count(self) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        self.state.metrics.generated_tokens.labels(mode=MODE).inc()

    @property
    def finish_reason(self) -> str:
        return self.gen.finish_reason or "stop"

    def usage(self) -> dict[str, Any]:
        completion = len(self.gen.generated)
        first = self.t_first if self.t_first is not None else time.perf_counter()
        last = self.t_last if self.t_last is not None else first
        return {
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": completion,
            "total_tokens": len(self.prompt_ids) + completion,
            # time to first token from the request's arrival (queueing and prefill included); then the
            # mean time between tokens after the first (null with fewer than two tokens)
            "ttft_ms": (first - self.t_request) * 1000.0,
            "ms_per_token": (last - first) * 1000.0 / (completion - 1) if completion > 1 else None,
            "total_ms": (last - self.t_request) * 1000.0,
        }

    def close(self) -> None:
        """Idempotent; runs on every path (see `_ClosingStream`)."""
        self.gen.close()
        self.state.http_generations.discard(self.gen)
        self.slot.release()
        self.state.refresh_gauges()


class ShuttingDown(Exception):
    """The server got SIGTERM: a stream in flight ends with an error event."""


class _ClosingStream(StreamingResponse):
    """A streaming response that closes its generation however it ends.

    A client that disconnects before the first chunk may leave Starlette never starting the body
    generator (so its `finally` never runs) or skipping a background task: close after the response call
    on every path instead.
    """

    def __init__(self, content: AsyncIterator[bytes], run: _Run, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.eespec
    state.metrics.requests.labels(route="models").inc()
    try:
        loaded = _ready(state)
    except _HttpError as exc:
        return _fail(state, exc)
    card = {"id": loaded.name, "object": "model", "created": _CREATED, "owned_by": "eespec"}
    return JSONResponse({"object": "list", "data": [card]})


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, chat=True)


def _fail(state: ServerState, exc: _HttpError | ProtocolError) -> JSONResponse:
    if isinstance(exc, ProtocolError):
        status = _STATUS.get(exc.code, 400)
        if isinstance(exc, SlotsFull):  # capacity: back off and retry
            status = 429 if exc.per_key else 503
        exc = _HttpError(status, exc.code, exc.message)
    state.metrics.errors.labels(code=exc.code).inc()
    return error_response(exc.status, exc.code, exc.message)


async def _serve(request: Request, *, chat: bool) -> Response:
    t_request = time.perf_counter()
    state: ServerState = request.app.state.eespec
    state.metrics.requests.labels(route="chat_completions" if chat else "completions").inc()
    try:
        loaded = _ready(state)
        body: CompletionBody | ChatBody = await _parse(request, ChatBody if chat else CompletionBody)
        vision = None
        if isinstance(body, ChatBody):
            with_images = await asyncio.to_thread(_chat_images, state, loaded, body.messages)
            if with_images is not None:
                prompt_ids, vision = with_images
            else:
                prompt_ids = await asyncio.to_thread(_chat_prompt, loaded.tokenizer, body.messages)
        elif isinstance(body.prompt, str):
            prompt_ids = await asyncio.to_thread(_completion_prompt, loaded.tokenizer, body.prompt)
        else:
            prompt_ids = list(body.prompt)
        _check_prompt(state, loaded, prompt_ids)
        if isinstance(body, ChatBody):
            max_tokens = body.max_completion_tokens or body.max_tokens
        else:
            max_tokens = body.max_tokens
        if max_tokens is None:
            max_tokens = _default_max_tokens(state, loaded, len(prompt_ids))
        _check_max_tokens(state, max_tokens)
        owner = request.scope.get("state", {}).get("eespec_owner", ANONYMOUS)
        spec = body.grammar_spec()
        # Compiling may take a while for a large grammar: on the worker, before any model work.
        grammar = await state.worker.run(_grammar_matcher, loaded, spec) if spec is not None else None
        slot = state.acquire_slot(owner)
    except (_HttpError, ProtocolError) as exc:
        return _fail(state, exc)
    try:
        run = _Run(state, loaded, body, prompt_ids, max_tokens, t_request, slot, grammar, vision)
    except BaseException:
        slot.release()
        raise

    try:
        first = await run.prefill()
    except BaseException as exc:
        run.close()
        if not isinstance(exc, Exception):
            raise
        log.exception("prefill failed")
        return _fail(state, _HttpError(500, "internal", "internal server error"))

    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": loaded.name,
    }
    if body.stream:
        return _ClosingStream(
            _stream(run, first, head, chat=chat, include_usage=body.include_usage),
            run,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _complete(request, run, first, head, chat=chat)


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    """Set `gone` when the client goes away.

    A blocking `receive` notices the disconnect as soon as it happens, without polling.
    """
    try:
        message = await request.receive()
    except Exception:
        return
    if message.get("type") == "http.disconnect":
        gone.set()


async def _complete(request: Request, run: _Run, first: int, head: dict[str, Any], *, chat: bool) -> Response:
    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, gone))
    try:
        async for _token in run.tokens(first):
            if gone.is_set():
                return Response(status_code=499)  # nobody reads it; stop generating
        text = await asyncio.to_thread(visible_text, run.text.tokenizer, run.text.stops, run.gen.generated)
    except ShuttingDown:
        return _fail(run.state, _HttpError(503, "shutting_down", "the server is shutting down; retry"))
    except Exception:
        log.exception("generation failed")
        return _fail(run.state, _HttpError(500, "internal", "internal server error"))
    finally:
        watcher.cancel()
        run.close()
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice.update(finish_reason=run.finish_reason, logprobs=None)
    payload = {
        **head,
        "object": "chat.completion" if chat else "text_completion",
        "choices": [choice],
        "usage": run.usage(),
    }
    return JSONResponse(payload)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def _stream(
    run: _Run, first: int, head: dict[str, Any], *, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE chunks: text deltas, a final chunk with `finish_reason`, usage if asked, then `[DONE]`.

    A client that goes away cancels this generator at its next await; `_ClosingStream` frees the cache
    on every path. On SIGTERM the stream ends with an error event (`shutting_down`) and `[DONE]`.
    """
    base: dict[str, Any] = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: str | None, finish_reason: str | None = None, role: bool = False) -> bytes:
        if chat:
            d: dict[str, Any] = {"role": "assistant"} if role else {}
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d}
        else:
            choice = {"index": 0, "text": delta or ""}
        choice.update(finish_reason=finish_reason, logprobs=None)
        return _sse({**base, "choices": [choice]})

    try:
        if chat:
            yield chunk("", role=True)
        async for delta in run.deltas(first):
            if delta:
                yield chunk(delta)
        rest = run.text.finish()
        yield chunk(rest if rest or not chat else None, run.finish_reason)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": run.usage()})
    except ShuttingDown:
        run.state.metrics.errors.labels(code="shutting_down").inc()
        message = "the server is shutting down; retry"
        yield _sse({"error": {"message": message, "type": "service_unavailable", "code": "shutting_down"}})
    except Exception:
        log.exception("generation failed mid-stream")
        run.state.metrics.errors.labels(code="internal").inc()
        yield _sse(
            {"error": {"message": "internal server error", "type": "server_error", "code": "internal"}}
        )
    finally:
        run.close()
    yield _sse("[DONE]")
