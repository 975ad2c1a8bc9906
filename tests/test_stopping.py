"""Finish rules of a round: EOS, max_tokens and stop strings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.stopping import RoundResult, StopStrings, apply_finish_rules

EOS = frozenset({2})


class CharTokenizer:
    """Token i decodes to chr(ord('a') + i)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i) for i in ids)


def test_nothing_finishes():
    assert apply_finish_rules([5], [6, 7, 8], 2, 9, 100, EOS) == RoundResult(2, 9, False, None)


def test_eos_accepted_inside_the_window_ends_there_without_a_token():
    assert apply_finish_rules([5], [6, 2, 8], 3, 9, 100, EOS) == RoundResult(2, None, True, "stop")


def test_eos_as_the_verdict_token():
    assert apply_finish_rules([5], [6, 7], 1, 2, 100, EOS) == RoundResult(1, 2, True, "stop")


def test_max_tokens_inside_the_window_cuts_accepted():
    # 2 generated already, max 4: two more tokens, both accepted draft tokens, token null.
    assert apply_finish_rules([5, 5], [6, 7, 8], 3, 9, 4, EOS) == RoundResult(2, None, True, "length")


def test_max_tokens_on_the_verdict_token():
    assert apply_finish_rules([5, 5], [6, 7, 8], 1, 9, 4, EOS) == RoundResult(1, 9, True, "length")


def test_stop_string_completed_by_a_token_finishes_after_it():
    stops = StopStrings(CharTokenizer(), ["cd"])
    # generated "a", window "b c d": the token 'd' (3) completes "cd".
    result = apply_finish_rules([0], [1, 2, 3, 4], 4, 5, 100, frozenset(), stops)
    assert result == RoundResult(3, None, True, "stop")
    assert stops.cut("abcde") == "ab"
    assert StopStrings(CharTokenizer(), []).cut("abc") == "abc"


# -- the stop scan decodes only a tail: the first token that completes a stop is the same as a full decode's


def _first_stop_full(tokenizer, ids, stops) -> int | None:
    for n in range(1, len(ids) + 1):
        if any(s in tokenizer.decode(ids[:n], skip_special_tokens=False) for s in stops):
            return n
    return None


def _first_stop_tail(tokenizer, ids, stops) -> int | None:
    rule = StopStrings(tokenizer, stops)
    for n in range(1, len(ids) + 1):
        if rule.completed(ids[:n]):
            return n
    return None


class ByteTokenizer:
    """Token b is the byte b (multi-byte characters span tokens; an incomplete one decodes to U+FFFD)."""

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="replace")


def test_tail_scan_finds_a_stop_far_into_a_long_output():
    tokenizer = CharTokenizer()
    ids = [0] * 500 + [1, 2, 3]  # "aaaa…abcd"
    assert StopStrings(tokenizer, ["bcd"]).completed(ids)
    assert not StopStrings(tokenizer, ["bcd"]).completed(ids[:-1])
    assert StopStrings(tokenizer, ["bcd"]).tail_tokens < len(ids)  # really a tail, not the whole output


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab€🤖 \n", min_size=1, max_size=40),
    stop=st.text(alphabet="ab€🤖 \n", min_size=1, max_size=4),
    filler=st.integers(0, 60),
)
def test_tail_scan_agrees_with_a_full_decode_bytewise(text, stop, filler):
    """Multi-byte characters split over byte tokens, stops of up to 4 characters behind long fillers."""
    tokenizer = ByteTokenizer()
    ids = list(("x" * filler + text).encode())
    assert _first_stop_tail(tokenizer, ids, [stop]) == _first_stop_full(tokenizer, ids, [stop])


@pytest.mark.slow
def test_tail_scan_agrees_with_a_full_decode_on_the_real_tokenizer():
    """SmolLM2's byte-level BPE: random token sequences and stops cut out of their own decoded text."""
    import random

    from transformers import AutoTokenizer

    from shared.defaults import DEFAULT_TARGET
    from shared.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_TARGET))
    rng = random.Random(0)
    checked = 0
    for _ in range(60):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(20, 60))]
        text = tokenizer.decode(ids, skip_special_tokens=False)
        start = rng.randrange(len(text) // 2, len(text))
        stop = text[start : start + rng.randint(1, 6)]
        if not stop:
            continue
        assert _first_stop_tail(tokenizer, ids, [stop]) == _first_stop_full(tokenizer, ids, [stop]), stop
        checked += 1
    assert checked >= 40
