"""Structured output (DESIGN.md, "Structured output"): grammars compiled with llguidance, token masks.

Both sides use this module. The target masks its logits rows with `GrammarMatcher.mask_for_window`
(one row per window position, the matcher advanced along the draft tokens and left where it was), then
commits the verdict's tokens; the edge masks its draft logits with `GrammarMatcher.allowed` after
`sync`-ing the matcher to the prefix it drafts from. A mask is a bool tensor over the *model's*
vocabulary: ids the tokenizer does not have (vocab padding) are never allowed, and EOS is allowed
exactly where the grammar may end (only EOS once it is complete).

    compiler = grammar_compiler(tokenizer, vocab_size=model.config.vocab_size, eos_ids=[2])
    matcher = compiler.matcher(parse_grammar({"json_schema": {"type": "object"}}))
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from shared.errors import ProtocolError

# The canonical JSON of a grammar spec may not exceed this (checked before any compilation).
MAX_GRAMMAR_BYTES = 64 * 1024
# Compiled grammars kept per tokenizer (least recently used dropped first).
GRAMMAR_CACHE_SIZE = 64
_MESSAGE_CHARS = 300


class GrammarSpec(BaseModel):
    """`start.grammar`: exactly one of `json_schema` (an object), `regex` or `lark` (strings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    lark: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> GrammarSpec:
        given = [name for name in ("json_schema", "regex", "lark") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("a grammar is exactly one of json_schema, regex, lark")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in ("json_schema", "regex", "lark") if getattr(self, name) is not None)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        """The grammar hash the compile cache is keyed by."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_llguidance(self) -> str:
        """The llguidance grammar text (validity is checked when a matcher is built from it)."""
        if self.json_schema is not None:
            return llguidance.LLMatcher.grammar_from_json_schema(self.json_schema)
        if self.regex is not None:
            return llguidance.LLMatcher.grammar_from_regex(self.regex)
        return llguidance.LLMatcher.grammar_from_lark(self.lark or "")


def parse_grammar(
    raw: GrammarSpec | Mapping[str, Any] | None, *, max_bytes: int = MAX_GRAMMAR_BYTES
) -> GrammarSpec | None:
    """A grammar from its protocol form (a plain dict is accepted); `bad_grammar` or `too_large` if not."""
    if raw is None:
        return None
    if isinstance(raw, GrammarSpec):
        spec = raw
    else:
        if not isinstance(raw, Mapping):
            raise ProtocolError("bad_grammar", "a grammar is an object: {json_schema | regex | lark: ...}")
        try:
            spec = GrammarSpec.model_validate(dict(raw))
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'grammar'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise ProtocolError("bad_grammar", f"invalid grammar: {detail}") from exc
    size = len(spec.canonical_json().encode())
    if size > max_bytes:
        raise ProtocolError("too_large", f"grammar of {size} bytes > the limit of {max_bytes}")
    return spec


class GrammarCompiler:
    """One tokenizer's llguidance vocabulary and its compiled grammars (an LRU cache by grammar hash).

    A compiled grammar is kept as a fresh matcher; each generation gets a deep copy of it, which shares
    the compiled lexer and parser tables.
    """

    def __init__(
        self, tokenizer, *, vocab_size: int, eos_ids: Sequence[int], cache_size: int = GRAMMAR_CACHE_SIZE
    ) -> None:
        eos = sorted({int(e) for e in eos_ids})
        if not eos:
            raise ProtocolError("bad_grammar", "structured output needs a model with an EOS token")
        self.vocab_size = int(vocab_size)
        tokenizer_size = len(tokenizer)
        # llguidance sizes its masks by n_vocab; ids past the tokenizer (model padding) have no bytes and
        # are never allowed. The mask is cut or padded to the model's vocabulary below.
        self.tokenizer_size = tokenizer_size
        try:
            self.ll_tokenizer = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=max(self.vocab_size, tokenizer_size), eos_token=eos
            )
        except ValueError as exc:  # e.g. a decoder llguidance cannot read token bytes through
            raise ProtocolError(
                "bad_grammar", _short(f"structured output does not support this tokenizer: {exc}")
            ) from exc
        self.eos_ids = tuple(eos)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compiled = 0  # grammars compiled (cache misses), for tests and metrics

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        """A matcher at the grammar's start; `bad_grammar` when llguidance rejects the grammar."""
        return GrammarMatcher(self._compiled(spec), self)

    def _compiled(self, spec: GrammarSpec) -> llguidance.LLMatcher:
        key = spec.key
        with self._lock:
            prototype = self._cache.get(key)
            if prototype is not None:
                self._cache.move_to_end(key)
                return prototype
        try:
            text = spec.to_llguidance()
        except ValueError as exc:  # e.g. a json_schema that is not a JSON object
            raise ProtocolError("bad_grammar", _short(f"invalid {spec.kind}: {exc}")) from exc
        limits = llguidance.LLParserLimits(verbose_errors=False)
        prototype = llguidance.LLMatcher(self.ll_tokenizer, text, log_level=0, limits=limits)
        if prototype.is_error():
            raise ProtocolError("bad_grammar", _short(f"invalid {spec.kind}: {prototype.get_error()}"))
        with self._lock:
            self.compiled += 1
            self._cache[key] = prototype
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return prototype


_COMPILERS: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], GrammarCompiler]] = (
    weakref.WeakKeyDictionary()
)
_COMPILERS_LOCK = threading.Lock()


def grammar_compiler(tokenizer, *, vocab_size: int, eos_ids: Sequence[int]) -> GrammarCompiler:
    """The compiler for this tokenizer object (built once: wrapping a large vocabulary takes ~1 s).

    `bad_grammar` without a tokenizer or an EOS id: a grammar must be able to end the generation.
    """
    if tokenizer is None:
        raise ProtocolError("bad_grammar", "structured output needs the model's tokenizer")
    if not eos_ids:
        raise ProtocolError("bad_grammar", "structured output needs a model with an EOS token")
    key = (int(vocab_size), tuple(sorted({int(e) for e in eos_ids})))
    with _COMPILERS_LOCK:
        per_tokenizer = _COMPILERS.setdefault(tokenizer, {})
        compiler = per_tokenizer.get(key)
        if compiler is None:
            compiler = per_tokenizer[key] = GrammarCompiler(tokenizer, vocab_size=vocab_size, eos_ids=eos_ids)
        return compiler


class GrammarMatcher:
    """The grammar state of one generation: the tokens consumed so far (those after the prompt).

    The matcher never consumes a token the grammar forbids (llguidance's error state is final). It only
    moves forward: window masks are computed on a copy (`fork`), and going back (`rollback`, `sync` to a
    shorter or different prefix) rebuilds it from the compiled grammar. llguidance 1.9's own rollback
    allowed tokens afterwards that a fresh matcher on the same tokens forbids (seen with a JSON schema
    after masks had been computed between consumes and rollbacks), and so did consuming EOS and rolling
    back across it; EOS is therefore kept here only (`ended`), and nothing is legal after it.
    """

    def __init__(self, prototype: llguidance.LLMatcher, compiler: GrammarCompiler) -> None:
        self._prototype = prototype
        self._matcher = prototype.deep_copy()
        self.compiler = compiler
        self.vocab_size = compiler.vocab_size
        self.tokens: list[int] = []
        self.rebuilds = 0  # how often going back cost a replay of the tokens (a cost figure)
        words = (max(self.vocab_size, compiler.tokenizer_size) + 31) // 32
        self._bitmask = np.zeros((1, words), dtype=np.int32)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.compiler.eos_ids

    @property
    def ended(self) -> bool:
        """EOS was accepted: no token is legal after it."""
        return bool(self.tokens) and self.tokens[-1] in self.eos_ids

    def is_complete(self) -> bool:
        """The grammar can end here (EOS is allowed)."""
        return self.ended or self._matcher.is_accepting()

    def fork(self) -> GrammarMatcher:
        """An independent matcher in the same state (cheap: llguidance copies the parser state)."""
        twin = GrammarMatcher.__new__(GrammarMatcher)
        twin.__dict__.update(self.__dict__)
        twin._matcher = self._matcher.deep_copy()
        twin.tokens = list(self.tokens)
        twin._bitmask = np.zeros_like(self._bitmask)
        return twin

    def allowed(self) -> torch.Tensor:
        """The tokens allowed next: bool [vocab_size]."""
        return torch.from_numpy(self._allowed_array())

    def _allowed_array(self) -> np.ndarray:
        # Built in numpy: small torch copies of a vocabulary-sized row cost tens of ms on a loaded CPU.
        if self.ended:
            raise ProtocolError("bad_grammar", "nothing may follow EOS")
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        mask = np.zeros(self.vocab_size, dtype=np.bool_)
        n = min(self.vocab_size, self.compiler.tokenizer_size)
        mask[:n] = bits[:n]
        if not mask.any():
            raise ProtocolError("bad_grammar", "the grammar allows no token of this vocabulary here")
        return mask

    def mask_for_window(self, draft_tokens: Sequence[int]) -> torch.Tensor:
        """Masks for a window's k + 1 rows, bool [k + 1, vocab_size]; this matcher does not move.

        Row i is the mask after draft tokens 0..i-1. Rows after a draft token the grammar forbids (or
        after EOS, where the generation ends) are all True: verification rejects that token (its masked
        logit is -inf) or finishes, so those rows are never read.
        """
        k = len(draft_tokens)
        masks = np.ones((k + 1, self.vocab_size), dtype=np.bool_)
        masks[0] = self._allowed_array()
        probe = self.fork() if k else None
        for i in range(k):
            token = int(draft_tokens[i])
            if not (0 <= token < self.vocab_size and masks[i, token]) or token in self.eos_ids:
                break
            probe.commit([token])  # type: ignore[union-attr]
            masks[i + 1] = probe._allowed_array()  # type: ignore[union-attr]
        return torch.from_numpy(masks)

    def commit(self, tokens: Sequence[int]) -> None:
        """Advance by tokens that were chosen under this grammar's masks."""
        tokens = [int(t) for t in tokens]
        legal = self._consume_legal(tokens)
        if legal != len(tokens):
            raise ProtocolError("bad_grammar", f"token {tokens[legal]} is outside the grammar")

    def rollback(self, n: int) -> None:
        """Forget the last n committed tokens."""
        if not 0 <= n <= len(self.tokens):
            raise ValueError(f"cannot roll back {n} of {len(self.tokens)} tokens")
        if n == 0:
            return
        if n == 1 and self.ended:  # an accepted EOS was never fed to llguidance
            self.tokens.pop()
            return
        keep = self.tokens[: len(self.tokens) - n]
        self._matcher = self._prototype.deep_copy()
        self.tokens = []
        self.rebuilds += 1
        if self._consume_legal(keep) != len(keep):
            raise RuntimeError("replaying legal tokens failed")

    def sync(self, tokens: Sequence[int]) -> bool:
        """Move to the state after `tokens` (back to the common prefix, then forward through the rest).

        False when `tokens` leave the grammar; the matcher then stands after their longest legal prefix.
        """
        tokens = [int(t) for t in tokens]
        common = 0
        limit = min(len(self.tokens), len(tokens))
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        self.rollback(len(self.tokens) - common)
        rest = tokens[common:]
        return self._consume_legal(rest) == len(rest)

    def _consume_legal(self, tokens: list[int]) -> int:
        """Consume the longest legal prefix of `tokens`; returns its length."""
        done = 0
        while done < len(tokens) and not self.ended:
            if tokens[done] in self.eos_ids:
                if not self._matcher.is_accepting():
                    break
                self.tokens.append(tokens[done])  # kept here only (see the class docstring)
                done += 1
                continue
            upto = next((i for i in range(done, len(tokens)) if tokens[i] in self.eos_ids), len(tokens))
            legal = self._matcher.validate_tokens(tokens[done:upto])
            if legal == 0:
                break
            for token in tokens[done : done + legal]:
                if not self._matcher.consume_token(token):
                    raise RuntimeError(f"llguidance refused a validated token: {self._matcher.get_error()}")
                self.tokens.append(token)
            done += legal
        return done


def apply_mask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with every id outside `mask` set to -inf (rows [..., V] and masks broadcastable to them)."""
    return logits.masked_fill(~mask.to(logits.device), float("-inf"))


def _short(message: str) -> str:
    """The first lines of a grammar error, bounded (never a path or an internal trace)."""
    text = " ".join(line.strip() for line in message.strip().splitlines()[:4])
    return text[:_MESSAGE_CHARS]
