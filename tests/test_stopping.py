"""Finish rules of a round: EOS, max_tokens and stop strings."""

from __future__ import annotations

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
