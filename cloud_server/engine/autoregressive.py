"""The cloud-only baseline: the target alone, one forward pass per token (DESIGN.md, "Cloud HTTP surface").

Transport-free like `TargetSession`: the HTTP routes run `prefill` and each `step` as separate jobs on the
inference worker, so concurrent requests and speculation sessions interleave token by token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from cloud_server.engine.batched import Segment
from cloud_server.engine.loading import LoadedTarget
from cloud_server.engine.stepwise import Stepwise, drive
from shared.attention import DEFAULT_PREFILL_CHUNK, prefill_plan
from shared.grammar import GrammarMatcher, apply_mask
from shared.kv import CachedLM
from shared.sampling import SamplingParams
from shared.stopping import FinishReason, StopStrings, check_finished
from shared.verification import pick_token
from shared.vlm import VisionCachedLM, VisionInputs, cached_lm_for


class AutoregressiveGeneration:
    """One generation on the target: `prefill(prompt_ids)`, then `step()` until `finished`.

    Tokens are chosen with `pick_token` (argmax, or transformers' warpers then an inverse-CDF draw with a
    generator seeded by `sampling.seed`); the finish rules are those of `shared.stopping` (EOS is part of
    the output, as in `generate()`). The KV cache is dropped as soon as the generation finishes or `close`
    is called.
    """

    def __init__(
        self,
        loaded: LoadedTarget,
        sampling: SamplingParams,
        max_tokens: int,
        stop: Sequence[str] | None = None,
        grammar: GrammarMatcher | None = None,
        prefill_chunk_tokens: int | None = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.model = loaded.model
        self.early_exit = loaded.early_exit  # the scheduler batches steps of generations on one target
        self.tokenizer = loaded.tokenizer
        self.eos_ids = frozenset(int(t) for t in loaded.eos_ids)
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.stops = StopStrings(loaded.tokenizer, stop) if stop else None
        self.generator = None if sampling.greedy else torch.Generator().manual_seed(sampling.seed)
        # Structured output: each token is chosen from the logits masked by the grammar (a fresh matcher).
        self.grammar = grammar
        self.prompt_ids: list[int] = []
        self.generated: list[int] = []
        self.finish_reason: FinishReason | None = None
        self.prefill_s = 0.0
        self.busy_s = 0.0
        self._lm: CachedLM | None = None
        self._closed = False
        self._prefill_chunk = prefill_chunk_tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self._closed

    @property
    def kv_bytes(self) -> int:
        lm = self._lm
        return lm.nbytes if lm is not None else 0

    def prefill(self, prompt_ids: Sequence[int], images: VisionInputs | None = None) -> int:
        """`prefill_stepwise` run to the end at once."""
        return drive(self.prefill_stepwise(prompt_ids, images))

    def prefill_stepwise(
        self, prompt_ids: Sequence[int], images: VisionInputs | None = None
    ) -> Stepwise[int]:
        """Run the prompt (with a VLM's processed `images`) and return the first generated token, yielding
        between prefill chunks (`shared.attention.prefill_plan`: bit-identical to a one-shot prefill)."""
        if self._lm is not None or self.generated or self._closed:
            raise RuntimeError("prefill runs once, on a fresh generation")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("the prompt is empty")
        lm = cached_lm_for(self.model)
        if images is not None:
            if not isinstance(lm, VisionCachedLM):
                raise ValueError("this model takes no images")
            lm.set_images(images)
        self._lm = lm
        self.prompt_ids = prompt
        # A VLM's prefill carries its images' placeholders and positions in one forward: never chunked.
        chunk = None if isinstance(lm, VisionCachedLM) else self._prefill_chunk
        *head, last = prefill_plan(prompt, len(prompt), chunk)
        try:
            for piece in head:
                t0 = time.perf_counter()
                lm.forward(piece.ids, keep=1, keys_to=piece.keys_to)
                self.prefill_s += time.perf_counter() - t0
                yield
            t0 = time.perf_counter()
            token = self._choose(lm.forward(last.ids, keep=1, keys_to=last.keys_to)[-1])
            self.prefill_s += time.perf_counter() - t0
        except BaseException:
            self.close()
            raise
        self.busy_s += self.prefill_s
        return token

    def step(self) -> int:
        """Feed the last token and return the next one."""
        segment = self.plan_step()
        t0 = time.perf_counter()
        logits = segment.kv_cache.forward(segment.new_ids, keep=1)
        return self.finish_step(logits, time.perf_counter() - t0)

    def plan_step(self) -> Segment:
        """The next step's forward: the last token on this generation's cache."""
        lm = self._lm  # a local reference: `close` from another thread cannot pull it away mid-forward
        if lm is None or self.finished:
            raise RuntimeError("no generation in progress")
        return Segment(lm, [self.generated[-1]], keep=1)

    def finish_step(self, logits: torch.Tensor, seconds: float) -> int:
        """Choose the next token from the step's logits [1, V] (`seconds`: its share of model time)."""
        self.busy_s += seconds
        return self._choose(logits[-1])

    def abort_step(self) -> None:
        """The step's forward failed and left the cache in doubt: the generation ends."""
        self.close()

    def close(self) -> None:
        """Stop and free the KV cache (idempotent; safe while a step is running on the worker)."""
        self._closed = True
        self._lm = None

    def _choose(self, logits_row: torch.Tensor) -> int:
        if self.grammar is not None:
            logits_row = apply_mask(logits_row, self.grammar.allowed())
        token = pick_token(logits_row, self.sampling, self.generator)
        if self.grammar is not None:
            self.grammar.commit([token])
        self.generated.append(token)
        self.finish_reason = check_finished(self.generated, self.max_tokens, self.eos_ids, self.stops)
        if self.finish_reason is not None:
            self._lm = None
        return token
