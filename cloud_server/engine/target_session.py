"""One generation on the target: prefill, then verification rounds with early predictions.

Transport-free: the websocket server and the in-process decoder both drive this class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cloud_server.engine.early_exit import EarlyExitTarget
from shared.attention import refill_pieces
from shared.errors import ProtocolError
from shared.hashing import ids_hash
from shared.protocol import Draft, Early, Started, Verdict
from shared.sampling import SamplingParams, SparseProposal, target_probs
from shared.stopping import StopStrings, apply_finish_rules, check_finished
from shared.verification import RoundUniforms, pick_token, verify_window

EarlyCallback = Callable[[Early], None]


@dataclass(frozen=True)
class EngineLimits:
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048
    max_window: int = 16


class TargetSession:
    """Committed sequence, KV cache and RNG of one generation on the early-exit target."""

    def __init__(
        self,
        target: EarlyExitTarget,
        *,
        eos_ids: Sequence[int],
        tokenizer=None,
        limits: EngineLimits | None = None,
    ) -> None:
        self.early_exit = target
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        self.tokenizer = tokenizer
        self.limits = limits or EngineLimits()
        self.vocab_size = int(target.model.config.vocab_size)
        self.kv_cache = target.new_kv_cache()
        self.committed: list[int] = []
        self.prompt_len = 0
        self.round = 0
        self.finished = True
        self.finish_reason: str | None = None
        self.sampling = SamplingParams()
        self.max_tokens = 0
        self.stops: StopStrings | None = None
        self.generator: torch.Generator | None = None
        self.busy_s = 0.0

    @property
    def generated(self) -> list[int]:
        return self.committed[self.prompt_len :]

    @property
    def kv_bytes(self) -> int:
        return self.kv_cache.nbytes

    def start(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop: Sequence[str] | None = None,
    ) -> Started:
        """Prefill the prompt and produce the target's first token."""
        t0 = time.perf_counter()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ProtocolError("bad_frame", "the prompt is empty")
        if len(prompt) > self.limits.max_prompt_tokens:
            raise ProtocolError(
                "too_large", f"prompt of {len(prompt)} tokens > {self.limits.max_prompt_tokens}"
            )
        if not 1 <= max_tokens <= self.limits.max_tokens:
            raise ProtocolError("limit_exceeded", f"max_tokens must be in 1..{self.limits.max_tokens}")
        self._check_ids(prompt)
        if stop and self.tokenizer is None:
            raise ProtocolError("bad_frame", "stop strings need the server's tokenizer")
        self.kv_cache.reset()
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.stops = StopStrings(self.tokenizer, stop) if stop else None
        self.generator = torch.Generator().manual_seed(sampling.seed)
        self.round = 0
        self.prompt_len = len(prompt)
        logits = self.kv_cache.forward(prompt, keep=1)
        token = pick_token(logits[-1], sampling, self.generator)
        self.committed = [*prompt, token]
        reason = check_finished(self.generated, max_tokens, self.eos_ids, self.stops)
        self.finished = reason is not None
        self.finish_reason = reason
        if self.finished:
            self.kv_cache.reset()
        elapsed = time.perf_counter() - t0
        self.busy_s += elapsed
        return Started(
            prompt_tokens=len(prompt),
            prompt_hash=ids_hash(prompt),
            first_token=token,
            finished=self.finished,
            finish_reason=reason,
            server_ms=elapsed * 1000.0,
        )

    def verify(
        self, draft: Draft, on_early: EarlyCallback | None = None, exits: Sequence[int] | None = None
    ) -> Verdict:
        """Verify one window; early predictions go to `on_early` while the forward pass continues."""
        t0 = time.perf_counter()
        proposals = self._check_draft(draft)
        tokens = list(draft.tokens)
        k = len(tokens)
        uniforms = None if self.sampling.greedy else RoundUniforms.draw(self.generator, k)  # type: ignore[arg-type]
        pending = self.kv_cache.sync(self.committed)

        def on_exit(layer: int, logits: torch.Tensor, t_ms: float) -> None:
            prediction = verify_window(logits, tokens, self.sampling, proposals, uniforms)
            on_early(  # type: ignore[misc]
                Early(
                    round=draft.round,
                    layer=layer,
                    accepted=prediction.accepted,
                    token=prediction.token,
                    confidence=self._confidence(logits[prediction.accepted], prediction.token),
                    t_ms=t_ms,
                )
            )

        t_forward = time.perf_counter()
        logits = self.early_exit.forward(
            self.kv_cache,
            [*pending, *tokens],
            keep=k + 1,
            on_exit=on_exit if on_early else None,
            layers=exits,
            extra_ids=tokens,
        )
        verify_ms = (time.perf_counter() - t_forward) * 1000.0
        outcome = verify_window(logits, tokens, self.sampling, proposals, uniforms)
        result = apply_finish_rules(
            self.generated, tokens, outcome.accepted, outcome.token, self.max_tokens, self.eos_ids, self.stops
        )
        self.committed.extend(tokens[: result.accepted])
        if result.token is not None:
            self.committed.append(result.token)
        self.round = draft.round
        self.finished = result.finished
        self.finish_reason = result.finish_reason
        if self.finished:
            self.kv_cache.reset()  # a finished generation holds no KV cache
        else:
            self.kv_cache.sync(self.committed)
        elapsed = time.perf_counter() - t0
        self.busy_s += elapsed
        return Verdict(
            round=draft.round,
            accepted=result.accepted,
            token=result.token,
            finished=result.finished,
            finish_reason=result.finish_reason,
            verify_ms=verify_ms,
            server_ms=elapsed * 1000.0,
        )

    def restore(self, record) -> None:
        """Continue a detached generation (a `sessions.DetachedRecord`): re-prefill its committed ids."""
        self.kv_cache.reset()
        self.committed = list(record.committed)
        self.prompt_len = record.prompt_len
        self.round = record.round
        self.finished = record.finished
        self.finish_reason = record.finish_reason
        self.sampling = record.sampling
        self.max_tokens = record.max_tokens
        self.stops = StopStrings(self.tokenizer, record.stop) if record.stop else None
        self.generator = torch.Generator()
        if record.rng_state is not None:
            self.generator.set_state(record.rng_state)
        t0 = time.perf_counter()
        if len(self.committed) > 1 and not self.finished:
            # In the pieces the generation computed them, so the cache is bit-identical (shared.attention).
            for piece in refill_pieces(self.committed[:-1], self.prompt_len):
                self.kv_cache.forward(piece, keep=1)
        self.busy_s += time.perf_counter() - t0

    def close(self) -> None:
        """Free the KV cache (idempotent)."""
        self.kv_cache.reset()
        self.finished = True

    def _confidence(self, row: torch.Tensor, token: int) -> float:
        row = row.detach().cpu()
        probs = (
            torch.softmax(row.double(), -1)
            if self.sampling.greedy
            else target_probs(row[None], self.sampling)[0]
        )
        return float(probs[token])

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ProtocolError(
                "bad_frame", f"token ids outside the vocabulary (0..{self.vocab_size - 1}): {bad[:5]}"
            )

    def _check_draft(self, draft: Draft) -> list[SparseProposal] | None:
        if self.finished:
            raise ProtocolError("bad_round", "no generation in progress", round=draft.round)
        if draft.round != self.round + 1:
            raise ProtocolError(
                "bad_round", f"expected round {self.round + 1}, got {draft.round}", round=draft.round
            )
        if draft.pos != len(self.committed):
            raise ProtocolError(
                "bad_position",
                f"committed length is {len(self.committed)}, draft extends {draft.pos}",
                round=draft.round,
            )
        if len(draft.tokens) > self.limits.max_window:
            raise ProtocolError(
                "too_large",
                f"window of {len(draft.tokens)} > max_window {self.limits.max_window}",
                round=draft.round,
            )
        self._check_ids(draft.tokens)
        if self.sampling.greedy:
            return None
        if draft.q is None or len(draft.q) != len(draft.tokens):
            raise ProtocolError(
                "bad_frame", "sampling needs q: one proposal per draft token", round=draft.round
            )
        try:
            proposals = [SparseProposal(ids=tuple(e.ids), p=tuple(e.p)) for e in draft.q]
        except ValueError as exc:
            raise ProtocolError("bad_frame", f"bad proposal: {exc}", round=draft.round) from exc
        for token, proposal in zip(draft.tokens, proposals, strict=True):
            self._check_ids(proposal.ids)
            if proposal.prob_of(token) <= 0.0:
                raise ProtocolError(
                    "bad_frame", f"draft token {token} is not in its proposal", round=draft.round
                )
        return proposals
