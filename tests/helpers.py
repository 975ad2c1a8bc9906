"""Test helpers: the oracle (transformers' own generate) and engine assembly on tiny models."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance
import llguidance.hf
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.target_session import EngineLimits, TargetSession
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine, DraftWindow
from shared.sampling import SamplingParams


def oracle_greedy(
    model,
    prompt: Sequence[int],
    max_new_tokens: int,
    eos: int | None = None,
    logits_processor: LogitsProcessorList | None = None,
) -> list[int]:
    """The target alone: transformers' generate(do_sample=False), generated ids only (EOS included)."""
    ids = torch.tensor([list(prompt)], device=model.device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=eos if eos is not None else 0,
        logits_processor=logits_processor,
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
        self, prefix: Sequence[int], k: int, sampling: SamplingParams, cancel=None, grammar=None
    ) -> DraftWindow | None:
        window = super().draft(prefix, k, sampling, cancel, grammar)
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


# Structured output: a tokenizer llguidance can read, and the oracle's grammar processor.

# Tokens of several characters, so that one text has many tokenisations (as with a real BPE vocabulary).
MULTI_CHAR_TOKENS = ('{"', '":', '", "', '"}', "true", "false", "null", "\n")


def _byte_level(text: str) -> str:
    """GPT-2's byte-to-unicode map for ASCII: bytes up to the space become U+0100 + byte."""
    return "".join(chr(256 + ord(c)) if ord(c) <= 32 else c for c in text)


def bytelevel_tokenizer(
    extra_tokens: Sequence[str] = MULTI_CHAR_TOKENS, alphabet: Sequence[str] = tuple(map(chr, range(32, 127)))
):
    """A byte-level BPE tokenizer (the kind llguidance reads): 4 specials ("</s>" = 2 is EOS), the
    `alphabet` (default the 95 printable ASCII characters), then `extra_tokens`; no merges, so it encodes
    character by character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for token in [*alphabet, *extra_tokens]:
        vocab.setdefault(_byte_level(token), len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tokenizer


def llguidance_grammar(grammar: Mapping[str, Any]) -> str:
    """The llguidance grammar text for a protocol grammar dict, through llguidance's own converter."""
    ((kind, source),) = grammar.items()
    return llguidance.grammar_from(kind, json.dumps(source) if kind == "json_schema" else source)


class GrammarLogitsProcessor(LogitsProcessor):
    """The oracle's grammar: at each step of transformers' generate(), ids outside the grammar get -inf.

    Written against llguidance alone (not `shared.grammar`), so the engine is checked against an
    independent use of the library.
    """

    def __init__(self, tokenizer, grammar: Mapping[str, Any], prompt_len: int, vocab_size: int, eos: int):
        ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self.matcher = llguidance.LLMatcher(ll_tokenizer, llguidance_grammar(grammar), log_level=0)
        assert not self.matcher.is_error(), self.matcher.get_error()
        self.prompt_len = prompt_len
        self.vocab_size = vocab_size
        self.consumed = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[0, self.prompt_len :].tolist()
        for token in generated[self.consumed :]:
            assert self.matcher.consume_token(token), self.matcher.get_error()
        self.consumed = len(generated)
        bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
        allowed[: min(len(bias), scores.shape[-1])] = bias[: scores.shape[-1]] > 0
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def oracle_grammar_greedy(
    model, tokenizer, grammar: Mapping[str, Any], prompt: Sequence[int], max_new_tokens: int, eos: int = 2
) -> list[int]:
    """generate(do_sample=False) with the grammar as a logits processor."""
    processor = GrammarLogitsProcessor(tokenizer, grammar, len(prompt), model.config.vocab_size, eos)
    return oracle_greedy(
        model, prompt, max_new_tokens, eos=eos, logits_processor=LogitsProcessorList([processor])
    )
