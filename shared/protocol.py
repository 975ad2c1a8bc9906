"""Protocol 1 messages (DESIGN.md, "Decoding protocol"): one JSON object per websocket text frame."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from shared.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGES, ImagePayload
from shared.sampling import SamplingParams

PROTOCOL_VERSION = 1
# Stop lists are scanned after every token: bounded so that a frame cannot make that scan expensive.
MAX_STOPS = 16
MAX_STOP_CHARS = 256


def _utf8(value: str) -> str:
    """JSON can carry lone surrogates ("\\ud800") that no tokenizer can encode: a client mistake."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
StopString = Annotated[Text, Field(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOPS)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Message(BaseModel):
    # Unknown fields are ignored, as the protocol requires.
    model_config = ConfigDict(extra="ignore")


class Hello(_Message):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    model: str | None = None
    vocab_hash: str | None = None
    exits: list[int] | None = None


class Limits(_Message):
    max_sessions: int
    max_prompt_tokens: int
    max_tokens: int
    max_window: int
    ttl_s: float
    max_frame_bytes: int
    # Extension: the server closes a socket that sends nothing for this long (None: never).
    idle_timeout_s: float | None = None
    # A VLM target's image limits (`start.images`).
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES


class Welcome(_Message):
    type: Literal["welcome"] = "welcome"
    session_id: str
    model: str
    vocab_hash: str
    exit_layers: list[int]
    limits: Limits
    # Extension: which server answered (a replica of `eespec serve --ray`); None from older servers.
    server_id: str | None = None


class ChatMessage(_Message):
    role: Text
    content: Text


class Start(_Message):
    type: Literal["start"] = "start"
    token_ids: list[int] | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    max_tokens: int = Field(64, ge=1)
    stop: StopList | None = None
    # Extension: how many trailing `token_ids` are output already (an edge restarting a generation the
    # server lost); `max_tokens` and stop strings count them, and a grammar has seen them.
    generated: int = Field(0, ge=0)
    # {"json_schema": {...}} | {"regex": "..."} | {"lark": "..."}; validated by the server (`bad_grammar`),
    # not here, so a bad grammar is not a `bad_frame`.
    grammar: dict[str, Any] | None = None
    # One per image of the prompt, as the target's processor lays the placeholders out. Checked by the
    # server (`bad_image`, `too_large`, `limit_exceeded`), not here, so a bad image is not a `bad_frame`.
    images: list[ImagePayload] | None = None


class Started(_Message):
    type: Literal["started"] = "started"
    prompt_tokens: int
    prompt_hash: str
    first_token: int
    finished: bool
    finish_reason: Literal["stop", "length"] | None = None
    server_ms: float


class ProposalEntry(_Message):
    ids: list[int]
    p: list[Probability]


class Draft(_Message):
    type: Literal["draft"] = "draft"
    round: int = Field(ge=1)
    pos: int = Field(ge=0)
    tokens: list[int] = Field(min_length=1)
    q: list[ProposalEntry] | None = None


class Early(_Message):
    type: Literal["early"] = "early"
    round: int
    layer: int
    accepted: int
    token: int
    confidence: float
    t_ms: float


class Verdict(_Message):
    type: Literal["verdict"] = "verdict"
    round: int
    accepted: int
    token: int | None
    finished: bool
    finish_reason: Literal["stop", "length"] | None = None
    verify_ms: float
    server_ms: float
    # The scheduler's queue pressure when this window was scheduled: tokens waiting / the step's token
    # budget (above 1: work waits for later steps). Edges shrink their windows when it is high.
    server_load: float | None = None


class Cancel(_Message):
    type: Literal["cancel"] = "cancel"


class Cancelled(_Message):
    type: Literal["cancelled"] = "cancelled"


class Resume(_Message):
    type: Literal["resume"] = "resume"
    session_id: str
    committed_len: int
    committed_hash: str


class Resumed(_Message):
    type: Literal["resumed"] = "resumed"
    session_id: str
    committed_len: int
    tail: list[int]
    round: int
    # Extensions (unknown fields are ignored by peers): whether the generation had already finished, e.g.
    # when the verdict that finished it was lost in flight.
    finished: bool = False
    finish_reason: Literal["stop", "length"] | None = None


class Ping(_Message):
    type: Literal["ping"] = "ping"


class Pong(_Message):
    type: Literal["pong"] = "pong"


class Error(_Message):
    type: Literal["error"] = "error"
    code: str
    message: str
    retryable: bool = False
    round: int | None = None


Message = Annotated[
    Hello
    | Welcome
    | Start
    | Started
    | Draft
    | Early
    | Verdict
    | Cancel
    | Cancelled
    | Resume
    | Resumed
    | Ping
    | Pong
    | Error,
    Field(discriminator="type"),
]
MESSAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)
