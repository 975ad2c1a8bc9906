"""Test helpers: the oracle (transformers' own generate) and engine assembly on tiny models."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.target_session import EngineLimits, TargetSession
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine, DraftWindow
from shared.sampling import SamplingParams


def oracle_greedy(model, prompt: Sequence[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """The target alone: transformers' generate(do_sample=False), generated ids only (EOS included)."""
    ids = torch.tensor([list(prompt)], device=model.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=eos if eos is not None else 0,
    )
    return out[0, len(prompt) :].tolist()


def build_decoder(
    target_model,
    draft_model,
    *,
    window: int,
    exits: tuple[int, ...] = (),
    eos: int | None = None,
    preempt: bool = True,
    heads: ExitHeads | None = None,
    draft_engine: DraftEngine | None = None,
) -> SpeculativeDecoder:
    if heads is None and exits:
        heads = ExitHeads.untrained(exits, target_model.config.hidden_size).to(target_model.dtype)
    target = EarlyExitTarget(target_model, heads)
    session = TargetSession(target, eos_ids=[] if eos is None else [eos], limits=EngineLimits(max_window=16))
    engine = draft_engine or DraftEngine(draft_model)
    return SpeculativeDecoder(engine, session, window=window, preempt=preempt)


class PerturbedDraft(DraftEngine):
    """A draft that replaces its token at chosen absolute positions, forcing rejections there."""

    def __init__(self, model, positions: set[int], vocab_size: int) -> None:
        super().__init__(model)
        self.positions = positions
        self.vocab_size = vocab_size

    def draft(
        self, prefix: Sequence[int], k: int, sampling: SamplingParams, cancel=None
    ) -> DraftWindow | None:
        window = super().draft(prefix, k, sampling, cancel)
        if window is None:
            return None
        tokens = tuple(
            (t + 1) % self.vocab_size if len(prefix) + i in self.positions else t
            for i, t in enumerate(window.tokens)
        )
        return DraftWindow(
            prefix=window.prefix, tokens=tokens, proposals=window.proposals, draft_s=window.draft_s
        )


def twin(model):
    """An independent copy, so the draft never shares modules or the target's exit hooks."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return clone
