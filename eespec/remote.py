"""`eespec generate --server`: the edge side of one request, against a cloud server."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import torch

from edge_client.client import EdgeClient
from edge_client.decoder import GenerationResult
from edge_client.draft import DraftEngine
from edge_client.proposers import make_proposer, split_draft_name
from eespec.local import encode_prompt
from shared.images import ImagePayload, decode_payload
from shared.models import load_model, resolve_model
from shared.sampling import SamplingParams
from shared.stopping import StopStrings
from shared.vlm import is_vlm, load_processor


def generate_remote(
    server: str,
    draft: str,
    prompt: str,
    *,
    api_key: str | None,
    max_tokens: int,
    sampling: SamplingParams,
    chat: bool = False,
    stop: Sequence[str] | None = None,
    grammar: dict[str, Any] | None = None,
    window: int = 4,
    preempt: bool = True,
    optimistic: bool = True,
    adaptive: bool = False,
    fallback: str = "wait",
    threads: int | None = None,
    exits: Sequence[int] | None = None,
    images: Sequence[ImagePayload] = (),
) -> tuple[GenerationResult, str, list[int]]:
    """`images`: payloads for a VLM target; the VLM draft's processor lays the prompt out."""
    if threads:
        torch.set_num_threads(threads)
    draft_name, ngram = split_draft_name(draft)
    draft_model, tokenizer = load_model(draft_name)
    processor = load_processor(resolve_model(draft_name)) if is_vlm(draft_model) else None
    decoded = [decode_payload(p) for p in images]
    prompt_ids = encode_prompt(tokenizer, prompt, chat, decoded, processor)
    engine = make_proposer(DraftEngine(draft_model, processor=processor), ngram=ngram)

    async def run() -> GenerationResult:
        client = EdgeClient(
            server,
            engine,
            tokenizer=tokenizer,
            api_key=api_key,
            window=None if adaptive else window,
            preempt=preempt,
            optimistic=optimistic,
            fallback="continue" if fallback == "continue" else "wait",
            exits=exits,  # None: every exit the server runs
        )
        async with client:
            return await client.generate(
                prompt_ids,
                max_tokens=max_tokens,
                sampling=sampling,
                stop=stop,
                grammar=grammar,
                images=images,
            )

    result = asyncio.run(run())
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    if stop:
        text = StopStrings(tokenizer, stop).cut(text)
    return result, text, prompt_ids
