"""Server settings: CLI flags, or EESPEC_* environment variables (compose.yaml uses the latter)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.protocol import Limits


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EESPEC_", extra="ignore")

    target: str = "smollm2-135m-instruct"
    exit_layers: list[int] = Field(default_factory=lambda: [10, 20])
    exits_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: list[str] = Field(default_factory=list)
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    threads: int | None = None
    max_sessions: int = 64
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048
    max_window: int = 16
    ttl_s: float = 60.0
    max_frame_bytes: int = 1 << 20

    def limits(self) -> Limits:
        return Limits(
            max_sessions=self.max_sessions,
            max_prompt_tokens=self.max_prompt_tokens,
            max_tokens=self.max_tokens,
            max_window=self.max_window,
            ttl_s=self.ttl_s,
            max_frame_bytes=self.max_frame_bytes,
        )
