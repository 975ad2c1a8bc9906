"""Protocol errors with the stable codes of DESIGN.md."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "bad_frame",
    "unknown_type",
    "bad_round",
    "bad_position",
    "too_large",
    "unauthorized",
    "vocab_mismatch",
    "session_not_found",
    "limit_exceeded",
    "internal",
    "bad_grammar",
]

RETRYABLE: frozenset[str] = frozenset({"limit_exceeded", "internal"})


class ProtocolError(Exception):
    """An error the peer caused or must hear about; `code` is stable across versions."""

    def __init__(self, code: ErrorCode, message: str, *, round: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.round = round

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE
