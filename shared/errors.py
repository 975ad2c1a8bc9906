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
    "bad_image",
]

# Codes whose errors are retryable unless the raiser says otherwise: a capacity limit (try again later).
# `internal` is not: only the code that knows the session's state is intact may promise a safe retry.
RETRYABLE: frozenset[str] = frozenset({"limit_exceeded"})


class ProtocolError(Exception):
    """An error the peer caused or must hear about; `code` is stable across versions."""

    def __init__(
        self, code: ErrorCode, message: str, *, round: int | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.round = round
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        """True promises that sending the same frame again is safe and correct (DESIGN.md, error codes)."""
        return self.code in RETRYABLE if self._retryable is None else self._retryable
