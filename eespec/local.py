"""In-process speculative decoding: draft and early-exit target in one process (`eespec generate --local`).

The CLI's composition root: it is the one place that imports both the edge and the cloud packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cloud_server.engine import (
    EarlyExitTarget,
    EngineLimits,
    TargetSession,
    eos_ids_of,
    model_fingerprint,
    resolve_exit_heads,
)
from edge_client.decoder import GenerationResult, SpeculativeDecoder
from edge_client.draft import DraftEngine
from edge_client.proposers import make_proposer, split_draft_name
from shared.hashing import vocab_hash
from shared.models import load_model, resolve_model
from shared.precision import load_in_precision
from shared.prompts import encode_prompt
from shared.sampling import SamplingParams
from shared.stopping import StopStrings
from shared.vlm import is_vlm, load_processor, text_config


@dataclass
class LocalPipeline:
    target_model: Any
    draft_model: Any
    tokenizer: Any
    target: EarlyExitTarget
    session: TargetSession
    decoder: SpeculativeDecoder
    processor: Any = None  # a VLM target's processor (the draft VLM shares its image layout)

    @classmethod
    def load(
        cls,
        target: str,
        draft: str,
        *,
        exit_layers: Sequence[int] = (),
        exits_dir: str | None = None,
        window: int = 4,
        preempt: bool = True,
        threads: int | None = None,
        dtype: str = "auto",
    ) -> LocalPipeline:
        if threads:
            torch.set_num_threads(threads)
        target_model, tokenizer = load_in_precision(target, dtype)
        draft_name, ngram = split_draft_name(draft)
        draft_model, draft_tokenizer = load_model(draft_name)
        if vocab_hash(tokenizer) != vocab_hash(draft_tokenizer):
            raise ValueError("draft and target tokenizers differ (vocab_hash mismatch); they must share one")
        name = str(target).rstrip("/").split("/")[-1]
        heads = resolve_exit_heads(
            name,
            text_config(target_model.config).hidden_size,
            list(exit_layers),
            exits_dir,
            fingerprint=model_fingerprint(target_model, tokenizer),
        )
        early_target = EarlyExitTarget(target_model, heads)
        processor = load_processor(resolve_model(target)) if is_vlm(target_model) else None
        draft_processor = load_processor(resolve_model(draft_name)) if is_vlm(draft_model) else None
        session = TargetSession(
            early_target,
            eos_ids=eos_ids_of(target_model, tokenizer),
            tokenizer=tokenizer,
            limits=EngineLimits(max_window=max(16, window)),
            processor=processor,
        )
        # The draft gets the tokenizer so that it applies a request's grammar to its own proposals too.
        engine = DraftEngine(draft_model, tokenizer=tokenizer, processor=draft_processor)
        proposer = make_proposer(engine, ngram=ngram)
        decoder = SpeculativeDecoder(proposer, session, window=window, preempt=preempt)
        return cls(target_model, draft_model, tokenizer, early_target, session, decoder, processor)

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int,
        sampling: SamplingParams,
        chat: bool = False,
        stop: Sequence[str] | None = None,
        grammar: dict[str, Any] | None = None,
        images: Sequence[Any] = (),
    ) -> tuple[GenerationResult, str, list[int]]:
        """`images`: decoded images (PIL) for a VLM target, one per placeholder (put first by default)."""
        prompt_ids = encode_prompt(self.tokenizer, prompt, chat, images, self.processor)
        result = self.decoder.generate(
            prompt_ids, max_tokens=max_tokens, sampling=sampling, stop=stop, grammar=grammar, images=images
        )
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        if stop:
            text = StopStrings(self.tokenizer, stop).cut(text)
        return result, text, prompt_ids
