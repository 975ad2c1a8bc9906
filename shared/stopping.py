"""When a generation finishes: EOS, `max_tokens` and stop strings (DESIGN.md, "Verdict")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


class StopStrings:
    """Finds the token that completes a stop string in the decoded generated text.

    The finish rules ask after every token whether the text *now* contains a stop string; one that was
    not there a token ago must end within the last token's text, so only a tail of the generation is
    decoded: `tail_tokens` tokens, enough for the longest stop string even at one byte per token (every
    token of a byte-level or byte-fallback vocabulary decodes to >= 1 byte; a character is <= 4 bytes),
    plus slack for a split character or a stripped leading space where the tail starts. O(stop length)
    per token instead of re-decoding the whole output (O(n^2) per stream).
    """

    def __init__(self, tokenizer, stops: Iterable[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.tail_tokens = 4 * max((len(s) for s in self.stops), default=0) + 8

    def __bool__(self) -> bool:
        return bool(self.stops)

    def completed(self, generated_ids: Sequence[int]) -> bool:
        """Whether the text of `generated_ids` contains a stop string, given that it did not one token
        earlier (the finish rules stop at the first token that completes one)."""
        tail = list(generated_ids[-self.tail_tokens :])
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return any(stop in text for stop in self.stops)

    def cut(self, text: str) -> str:
        """The text up to (not including) the first stop string."""
        cuts = [text.find(s) for s in self.stops if s in text]
        return text[: min(cuts)] if cuts else text


@dataclass(frozen=True)
class RoundResult:
    """A verdict after the finish rules: `token` is None when the generation ended on an accepted token."""

    accepted: int
    token: int | None
    finished: bool
    finish_reason: FinishReason | None

    @property
    def new_tokens_count(self) -> int:
        return self.accepted + (self.token is not None)


def check_finished(
    generated: Sequence[int], max_tokens: int, eos_ids: frozenset[int], stops: StopStrings | None
) -> FinishReason | None:
    """Whether the generation ends with the last token of `generated` (all generated tokens so far)."""
    if generated[-1] in eos_ids:
        return "stop"
    if stops and stops.completed(generated):
        return "stop"
    if len(generated) >= max_tokens:
        return "length"
    return None


def apply_finish_rules(
    generated: Sequence[int],
    draft: Sequence[int],
    accepted: int,
    token: int,
    max_tokens: int,
    eos_ids: frozenset[int],
    stops: StopStrings | None = None,
) -> RoundResult:
    """Cut a round's outcome at the first token that finishes the generation.

    `generated` is what was generated before this round (first token included). The candidates are the
    accepted draft tokens then `token`; the first one that is EOS, completes a stop string or reaches
    `max_tokens` ends the generation and is itself part of the output.
    """
    candidates = [*draft[:accepted], token]
    so_far = list(generated)
    for j, candidate in enumerate(candidates):
        so_far.append(candidate)
        reason = check_finished(so_far, max_tokens, eos_ids, stops)
        if reason is not None:
            if j < accepted:
                return RoundResult(accepted=j + 1, token=None, finished=True, finish_reason=reason)
            return RoundResult(accepted=accepted, token=token, finished=True, finish_reason=reason)
    return RoundResult(accepted=accepted, token=token, finished=False, finish_reason=None)
