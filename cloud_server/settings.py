"""Server settings: CLI flags, or EESPEC_* environment variables (compose.yaml uses the latter)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.attention import DEFAULT_PREFILL_CHUNK, MIN_PREFILL_CHUNK
from shared.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGES
from shared.protocol import Limits


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EESPEC_", extra="ignore")

    target: str = "smollm2-135m-instruct"
    exit_layers: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [24])
    exits_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Secure by default: without a key the app refuses to start unless this says otherwise.
    insecure_no_auth: bool = False
    # Browser origins allowed to call the server (a request or upgrade that carries any other `Origin`
    # header is refused: a web page must not drive a local server). Native clients send no `Origin`.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str = "cpu"
    # The served precision (shared.precision): auto (a known model's serving default, else as stored),
    # float32, bfloat16, float16 or int8 (weight-only).
    dtype: str = "auto"
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    threads: int | None = None
    # Slots: websocket sessions and HTTP generations together; one API key may hold at most
    # `max_sessions_per_key` of them. None: an equal share of `max_sessions` for each configured key (so
    # no tenant can take every slot from another); all of them with one key or none (one tenant).
    max_sessions: int = 64
    max_sessions_per_key: int | None = None
    max_detached: int = 256
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048
    max_window: int = 16
    ttl_s: float = 60.0
    max_frame_bytes: int = 1 << 20
    max_body_bytes: int = 1 << 20
    # Admission: no new session or request while the scheduler's oldest queued job has waited longer.
    max_queue_delay_s: float = 5.0
    # Rows one scheduler step may batch (verification windows + autoregressive steps of all sessions). 32 is
    # the most a bf16 step holds bit-identically on the CPUs measured (engine.batched.EXACT_BATCH_ROWS);
    # 1 runs one session's forward at a time (the FIFO worker of before, for comparison).
    step_token_budget: int = Field(default=32, ge=1)
    # Prompts longer than this are prefilled in chunks, one scheduler call each, so other sessions' rounds
    # run between them; bit-identical to a one-shot prefill (shared.attention.prompt_pieces). 0: never.
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK
    # Images per request and bytes per image (`start.images`, chat image parts) for a VLM target.
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    # A socket that sends no `hello` within `hello_timeout_s`, or nothing at all for `idle_timeout_s`, is
    # closed (its session detached, so it can still be resumed within `ttl_s`).
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    # An HTTP connection whose request headers are not complete within this is closed (slowloris).
    header_timeout_s: float = 10.0
    # SIGTERM: streams end with an error event and websockets close with 1012 at once; connections
    # still open after this many seconds are cancelled.
    shutdown_timeout_s: float = 5.0

    @field_validator("prefill_chunk_tokens")
    @classmethod
    def _chunk_size(cls, value: int) -> int:
        if value and value < MIN_PREFILL_CHUNK:
            raise ValueError(f"prefill_chunk_tokens must be 0 (never chunk) or at least {MIN_PREFILL_CHUNK}")
        return value

    @field_validator("dtype")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from shared.precision import check_precision

        return check_precision(value)

    @field_validator("exit_layers", "api_key", "allowed_origins", mode="before")
    @classmethod
    def _list_from_env(cls, value: Any) -> Any:
        """Environment values: a JSON list, or comma-separated ("10,20", "key1,key2"), or one value."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def limits(self) -> Limits:
        return Limits(
            max_sessions=self.max_sessions,
            max_prompt_tokens=self.max_prompt_tokens,
            max_tokens=self.max_tokens,
            max_window=self.max_window,
            ttl_s=self.ttl_s,
            max_frame_bytes=self.max_frame_bytes,
            idle_timeout_s=self.idle_timeout_s,
            max_images=self.max_images,
            max_image_bytes=self.max_image_bytes,
        )

    @property
    def per_key_limit(self) -> int:
        if self.max_sessions_per_key is not None:
            return self.max_sessions_per_key
        return max(1, self.max_sessions // max(1, len(self.api_key)))
