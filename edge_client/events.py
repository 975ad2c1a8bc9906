"""What the edge client tells its caller as a generation unfolds.

The visible output is the verified tokens followed by the unverified ones. `tokens` appends, `verified`
confirms the oldest unverified tokens, `retract` removes the newest unverified ones (DESIGN.md, "Fallback").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class StreamEvent:
    kind: Literal["tokens", "verified", "retract"]
    token_ids: tuple[int, ...]
    verified: bool

    @classmethod
    def tokens(cls, ids: list[int], verified: bool) -> StreamEvent:
        return cls("tokens", tuple(ids), verified)

    @classmethod
    def confirm(cls, ids: list[int]) -> StreamEvent:
        return cls("verified", tuple(ids), True)

    @classmethod
    def retract(cls, ids: list[int]) -> StreamEvent:
        return cls("retract", tuple(ids), False)


EventCallback = Callable[[StreamEvent], None]


@dataclass
class VisibleOutput:
    """Rebuilds the caller's view from events (what a UI would do); used by tests and the CLI."""

    verified: list[int]
    unverified: list[int]

    def __init__(self) -> None:
        self.verified, self.unverified = [], []
        self.retracted: list[int] = []
        self.survived: list[int] = []

    def __call__(self, event: StreamEvent) -> None:
        ids = list(event.token_ids)
        if event.kind == "tokens":
            (self.verified if event.verified else self.unverified).extend(ids)
        elif event.kind == "verified":
            assert self.unverified[: len(ids)] == ids, "confirmed tokens must be the oldest unverified ones"
            del self.unverified[: len(ids)]
            self.verified.extend(ids)
            self.survived.extend(ids)
        else:
            assert self.unverified[len(self.unverified) - len(ids) :] == ids, (
                "retracted tokens must be the newest"
            )
            del self.unverified[len(self.unverified) - len(ids) :]
            self.retracted.extend(ids)
