"""One generation on the target: prefill, then verification rounds with early predictions.

Transport-free: the websocket server and the in-process decoder both drive this class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cloud_server.engine.batched import Segment
from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.stepwise import Stepwise, drive
from shared.attention import DEFAULT_PREFILL_CHUNK, prefill_plan
from shared.errors import ProtocolError
from shared.grammar import (
    GrammarCompiler,
    GrammarMatcher,
    GrammarSpec,
    apply_mask,
    grammar_compiler,
    parse_grammar,
)
from shared.hashing import ids_hash
from shared.protocol import Draft, Early, Started, Verdict
from shared.sampling import SamplingParams, SparseProposal, target_probs
from shared.stopping import StopStrings, apply_finish_rules, check_finished
from shared.verification import RoundUniforms, pick_token, verify_window
from shared.vlm import VisionCachedLM, VisionInputs, text_config

EarlyCallback = Callable[[Early], None]


@dataclass(frozen=True)
class VerifyRound:
    """A checked draft and the forward it needs (`segment`); what `finish_round` verifies against."""

    draft: Draft
    tokens: list[int]
    proposals: list[SparseProposal] | None
    uniforms: RoundUniforms | None
    masks: torch.Tensor | None
    rng_state: torch.Tensor | None
    segment: Segment
    t0: float


def round_failed(round_no: int) -> ProtocolError:
    return ProtocolError(
        "internal",
        "the verification forward failed; the session is back at its committed tokens",
        round=round_no,
        retryable=True,
    )


@dataclass(frozen=True)
class EngineLimits:
    max_prompt_tokens: int = 4096
    max_tokens: int = 2048
    max_window: int = 16
    # Prompts longer than this are prefilled in chunks (`shared.attention.prompt_pieces`); None: never.
    prefill_chunk_tokens: int | None = DEFAULT_PREFILL_CHUNK


class TargetSession:
    """Committed sequence, KV cache and RNG of one generation on the early-exit target."""

    def __init__(
        self,
        target: EarlyExitTarget,
        *,
        eos_ids: Sequence[int],
        tokenizer=None,
        limits: EngineLimits | None = None,
        grammars: GrammarCompiler | None = None,
        processor: Any = None,
    ) -> None:
        self.early_exit = target
        self.processor = processor  # a VLM's processor: it turns a generation's images into pixel inputs
        self.images: list[Any] = []  # the decoded images of the current generation (part of its record)
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        self.tokenizer = tokenizer
        self.limits = limits or EngineLimits()
        self.vocab_size = int(text_config(target.model.config).vocab_size)
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
        # Structured output: the grammar of the current generation and its matcher over `generated`.
        self._grammars = grammars
        self.grammar_spec: GrammarSpec | None = None
        self.grammar: GrammarMatcher | None = None

    @property
    def generated(self) -> list[int]:
        return self.committed[self.prompt_len :]

    @property
    def kv_bytes(self) -> int:
        return self.kv_cache.nbytes

    @property
    def _prefill_chunk(self) -> int | None:
        # A VLM's prefill carries its images' placeholders and positions in one forward: never chunked.
        return None if isinstance(self.kv_cache, VisionCachedLM) else self.limits.prefill_chunk_tokens

    def start(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        generated: int = 0,
        grammar: GrammarSpec | dict | None = None,
        images: Sequence[Any] = (),
    ) -> Started:
        """`start_stepwise` run to the end at once (in-process callers; the server runs it piece by piece)."""
        return drive(self.start_stepwise(prompt_ids, sampling, max_tokens, stop, generated, grammar, images))

    def start_stepwise(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        generated: int = 0,
        grammar: GrammarSpec | dict | None = None,
        images: Sequence[Any] = (),
    ) -> Stepwise[Started]:
        """Prefill the prompt and produce the target's first token, yielding between prefill chunks.

        `generated`: how many trailing prompt ids are output already (a restarted generation); the finish
        rules (`max_tokens`, stop strings) count them, and with `grammar` they were generated under it.
        With `grammar` every token is chosen from the target's logits masked by it. `images` (decoded,
        one per image of the prompt, laid out by the model's processor) go into the prefill only.
        """
        t0 = time.perf_counter()
        paused = 0.0
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ProtocolError("bad_frame", "the prompt is empty")
        if not 0 <= generated < min(len(prompt), max_tokens):
            raise ProtocolError("bad_frame", "generated must be below the prompt length and max_tokens")
        if len(prompt) > self.limits.max_prompt_tokens:
            raise ProtocolError(
                "too_large", f"prompt of {len(prompt)} tokens > {self.limits.max_prompt_tokens}"
            )
        if not 1 <= max_tokens <= self.limits.max_tokens:
            raise ProtocolError(
                "limit_exceeded", f"max_tokens must be in 1..{self.limits.max_tokens}", retryable=False
            )
        self._check_ids(prompt)
        if stop and self.tokenizer is None:
            raise ProtocolError("bad_frame", "stop strings need the server's tokenizer")
        spec = parse_grammar(grammar)  # compiled before any model work: a bad grammar costs no prefill
        matcher = self._grammar_matcher(spec, prompt[len(prompt) - generated :])
        vision = self._vision_inputs(images, prompt[: len(prompt) - generated])  # `bad_image` before any work
        self.grammar_spec, self.grammar = spec, matcher
        self.kv_cache.reset()
        self._set_images(list(images), vision)
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.stops = StopStrings(self.tokenizer, stop) if stop else None
        self.generator = torch.Generator().manual_seed(sampling.seed)
        self.round = 0
        self.prompt_len = len(prompt) - generated
        try:
            # A long prompt goes in chunks and a restart's generated tail in short pieces, as the generation
            # first computed it: the cache is bit-identical to a one-shot prefill's (shared.attention).
            *head, last = prefill_plan(prompt, self.prompt_len, self._prefill_chunk)
            for piece in head:
                self.kv_cache.forward(piece.ids, keep=1, keys_to=piece.keys_to)
                t_pause = time.perf_counter()
                yield  # other sessions' work may run here: not this session's time
                paused += time.perf_counter() - t_pause
            logits = self.kv_cache.forward(last.ids, keep=1, keys_to=last.keys_to)
            row = logits[-1] if matcher is None else apply_mask(logits[-1], matcher.allowed())
            token = pick_token(row, sampling, self.generator)
        except Exception as exc:
            # No generation in progress (a `start` begins from scratch, so sending it again is safe).
            self.close()
            raise ProtocolError("internal", "the prefill failed", retryable=True) from exc
        except BaseException:  # closed between chunks (the client went away), or shutdown
            self.close()
            raise
        if matcher is not None:
            matcher.commit([token])
        self.committed = [*prompt, token]
        reason = check_finished(self.generated, max_tokens, self.eos_ids, self.stops)
        self.finished = reason is not None
        self.finish_reason = reason
        if self.finished:
            self.kv_cache.reset()
        elapsed = time.perf_counter() - t0 - paused
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
        plan = self.plan_round(draft, on_early, exits)
        t_forward = time.perf_counter()
        try:
            (logits,) = self.early_exit.forward_batch([plan.segment])
        except BaseException as exc:
            self.abort_round(plan)
            if not isinstance(exc, Exception):
                raise
            raise round_failed(draft.round) from exc
        return self.finish_round(plan, logits, (time.perf_counter() - t_forward) * 1000.0)

    def plan_round(
        self, draft: Draft, on_early: EarlyCallback | None = None, exits: Sequence[int] | None = None
    ) -> VerifyRound:
        """Check a draft and prepare its window's forward (a `Segment`); nothing committed changes until
        `finish_round` (or `abort_round` puts the RNG and the cache back)."""
        t0 = time.perf_counter()
        proposals = self._check_draft(draft)
        tokens = list(draft.tokens)
        k = len(tokens)
        rng_state = self.generator.get_state() if self.generator is not None else None
        uniforms = None if self.sampling.greedy else RoundUniforms.draw(self.generator, k)  # type: ignore[arg-type]
        # One grammar mask per window row, for the exits and the final layer alike.
        masks = self.grammar.mask_for_window(tokens) if self.grammar is not None else None

        def on_exit(layer: int, logits: torch.Tensor, t_ms: float) -> None:
            if masks is not None:
                logits = apply_mask(logits, masks)
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

        try:
            pending = self.kv_cache.sync(self.committed)
            if len(pending) > 1 and not self.kv_cache.ids:
                # The cache was dropped by a rolled-back round: rebuild it in the generation's own pieces.
                for piece in prefill_plan(self.committed[:-1], self.prompt_len, self._prefill_chunk):
                    self.kv_cache.forward(piece.ids, keep=1, keys_to=piece.keys_to)
                pending = self.committed[-1:]
        except BaseException as exc:
            self._roll_back(rng_state)
            if not isinstance(exc, Exception):
                raise
            raise round_failed(draft.round) from exc
        wanted = self.early_exit.exit_layers if exits is None else exits
        segment = Segment(
            self.kv_cache,
            [*pending, *tokens],
            keep=k + 1,
            on_exit=on_exit if on_early else None,
            exit_layers=frozenset(wanted) & frozenset(self.early_exit.exit_layers),
            extra_ids=tuple(tokens),
        )
        return VerifyRound(draft, tokens, proposals, uniforms, masks, rng_state, segment, t0)

    def abort_round(self, plan: VerifyRound) -> None:
        """The round's forward failed: back to the committed state (a retry draws the same uniforms)."""
        self._roll_back(plan.rng_state)

    def finish_round(self, plan: VerifyRound, logits: torch.Tensor, verify_ms: float) -> Verdict:
        """Verify the window from its final logits and commit the outcome (the only mutation of a round)."""
        draft, tokens = plan.draft, plan.tokens
        try:
            if plan.masks is not None:
                logits = apply_mask(logits, plan.masks)
            outcome = verify_window(logits, tokens, self.sampling, plan.proposals, plan.uniforms)
            result = apply_finish_rules(
                self.generated,
                tokens,
                outcome.accepted,
                outcome.token,
                self.max_tokens,
                self.eos_ids,
                self.stops,
            )
        except BaseException as exc:
            self.abort_round(plan)
            if not isinstance(exc, Exception):
                raise
            raise round_failed(draft.round) from exc
        self.committed.extend(tokens[: result.accepted])
        if result.token is not None:
            self.committed.append(result.token)
        if self.grammar is not None:
            self.grammar.commit(self.committed[len(self.committed) - result.new_tokens_count :])
        self.round = draft.round
        self.finished = result.finished
        self.finish_reason = result.finish_reason
        if self.finished:
            self.kv_cache.reset()  # a finished generation holds no KV cache
        else:
            self.kv_cache.sync(self.committed)
        elapsed = time.perf_counter() - plan.t0
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
        """`restore_stepwise` run to the end at once."""
        drive(self.restore_stepwise(record))

    def restore_stepwise(self, record) -> Stepwise[None]:
        """Continue a detached generation (a `sessions.DetachedRecord`): re-prefill its committed ids,
        yielding between pieces."""
        self.kv_cache.reset()
        self.committed = list(record.committed)
        self.prompt_len = record.prompt_len
        images = list(getattr(record, "images", None) or [])
        self._set_images(images, self._vision_inputs(images, self.committed[: self.prompt_len]))
        self.round = record.round
        self.finished = record.finished
        self.finish_reason = record.finish_reason
        self.sampling = record.sampling
        self.max_tokens = record.max_tokens
        self.stops = StopStrings(self.tokenizer, record.stop) if record.stop else None
        self.generator = torch.Generator()
        if record.rng_state is not None:
            self.generator.set_state(record.rng_state)
        self.grammar_spec = record.grammar
        self.grammar = self._grammar_matcher(record.grammar, self.generated)
        if len(self.committed) > 1 and not self.finished:
            try:
                # In the pieces the generation computed them: a bit-identical cache (shared.attention).
                *head, last = prefill_plan(self.committed[:-1], self.prompt_len, self._prefill_chunk)
                for piece in head:
                    t0 = time.perf_counter()
                    self.kv_cache.forward(piece.ids, keep=1, keys_to=piece.keys_to)
                    self.busy_s += time.perf_counter() - t0
                    yield
                t0 = time.perf_counter()
                self.kv_cache.forward(last.ids, keep=1, keys_to=last.keys_to)
                self.busy_s += time.perf_counter() - t0
            except Exception as exc:
                self.close()
                raise ProtocolError("internal", "re-prefilling the resumed session failed") from exc
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Free the KV cache (idempotent)."""
        self.kv_cache.reset()
        self.finished = True

    def _roll_back(self, rng_state: torch.Tensor | None) -> None:
        """After a failed round: the committed state as it was before the round began.

        `CachedLM.ids` grows only once the model returns while `DynamicCache` grows layer by layer, so a
        forward that raised leaves the layers misaligned: drop the cache (the next round re-prefills the
        committed ids) and put the RNG back, so a retry draws the very uniforms this round drew.
        """
        self.kv_cache.reset()
        if rng_state is not None and self.generator is not None:
            self.generator.set_state(rng_state)

    def _vision_inputs(self, images: Sequence[Any], prompt: Sequence[int]) -> VisionInputs | None:
        """The images as the model's pixel inputs, checked against the prompt's placeholders."""
        if not images:
            return None
        if not isinstance(self.kv_cache, VisionCachedLM):
            raise ProtocolError("bad_image", "this model takes no images")
        return VisionInputs.build(self.processor, self.early_exit.model, images, prompt)

    def _set_images(self, images: list[Any], vision: VisionInputs | None) -> None:
        self.images = images
        if isinstance(self.kv_cache, VisionCachedLM):
            self.kv_cache.set_images(vision)

    def _grammar_matcher(self, spec: GrammarSpec | None, consumed: Sequence[int]) -> GrammarMatcher | None:
        """A matcher for `spec` that has consumed `consumed` (`bad_grammar` when it cannot)."""
        if spec is None:
            return None
        if self._grammars is None:
            self._grammars = grammar_compiler(
                self.tokenizer, vocab_size=self.vocab_size, eos_ids=self.eos_ids
            )
        matcher = self._grammars.matcher(spec)
        if not matcher.sync(consumed):
            raise ProtocolError("bad_grammar", "the tokens generated so far are outside the grammar")
        return matcher

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
