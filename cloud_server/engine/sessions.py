"""Session store: live sessions own a KV cache; a disconnect frees it and leaves a detached record."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from cloud_server.engine.target_session import TargetSession
from shared.grammar import GrammarSpec
from shared.sampling import SamplingParams


@dataclass
class DetachedRecord:
    """What a resume needs: the committed ids and the generation's state, no KV cache."""

    session_id: str
    committed: list[int]
    prompt_len: int
    round: int
    finished: bool
    finish_reason: str | None
    sampling: SamplingParams
    max_tokens: int
    stop: list[str] | None
    rng_state: torch.Tensor | None
    expires_at: float
    grammar: GrammarSpec | None = None
    images: list[Any] = field(default_factory=list)  # a VLM generation's decoded images


@dataclass
class SessionStore:
    """Live sessions by id, and detached records (at most `max_detached`: the oldest go first)."""

    max_sessions: int
    ttl_s: float
    max_detached: int = 256
    active: dict[str, TargetSession] = field(default_factory=dict)
    detached: dict[str, DetachedRecord] = field(default_factory=dict)

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def can_admit(self) -> bool:
        return len(self.active) < self.max_sessions

    def add(self, session_id: str, session: TargetSession) -> None:
        self.active[session_id] = session

    def detach(self, session_id: str) -> None:
        """Free the session's KV cache now and keep a record for `ttl_s` (idempotent)."""
        session = self.active.pop(session_id, None)
        if session is None:
            return
        generator = session.generator
        self.detached[session_id] = DetachedRecord(
            session_id=session_id,
            committed=list(session.committed),
            prompt_len=session.prompt_len,
            round=session.round,
            finished=session.finished,
            finish_reason=session.finish_reason,
            sampling=session.sampling,
            max_tokens=session.max_tokens,
            stop=list(session.stops.stops) if session.stops else None,
            rng_state=generator.get_state() if generator is not None else None,
            expires_at=time.monotonic() + self.ttl_s,
            grammar=session.grammar_spec,
            images=list(session.images),
        )
        session.close()
        while len(self.detached) > self.max_detached:  # dicts keep insertion order: oldest first
            del self.detached[next(iter(self.detached))]

    def take_detached(self, session_id: str) -> DetachedRecord | None:
        """Remove and return a live (unexpired) record: whoever takes it is its only resumer."""
        self.expire()
        return self.detached.pop(session_id, None)

    def put_back(self, record: DetachedRecord) -> None:
        """A resume that failed before it took over the session gives its record back."""
        if record.expires_at > time.monotonic():
            self.detached[record.session_id] = record

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        dead = [sid for sid, rec in self.detached.items() if rec.expires_at <= now]
        for sid in dead:
            del self.detached[sid]
        return len(dead)

    @property
    def kv_bytes(self) -> int:
        return sum(s.kv_bytes for s in self.active.values())
