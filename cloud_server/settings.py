"""Server settings: CLI flags, or EESPEC_* environment variables (compose.yaml uses the latter)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.protocol import Limits


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EESPEC_", extra="ignore")

    target: str = "smollm2-135m-instruct"
    exit_layers: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [24])
    exits_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list)
    device: str = "cpu"
    # The served precision (shared.precision): auto (a known model's serving default, else as stored),
    # float32, bfloat16, float16 or int8 (weight-only).
    dtype: str = "auto"
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    threads: int | None = None
    max_sessions: int = 64
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048
    max_window: int = 16
    ttl_s: float = 60.0
    max_frame_bytes: int = 1 << 20

    @field_validator("dtype")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from shared.precision import check_precision

        return check_precision(value)

    @field_validator("exit_layers", "api_key", mode="before")
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
        )
