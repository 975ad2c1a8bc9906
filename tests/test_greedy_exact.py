"""Greedy speculative output equals the target's own generate(do_sample=False), token for token."""

from __future__ import annotations

import pytest

from tests.helpers import PerturbedDraft, build_decoder, oracle_greedy, twin

PROMPTS = [[0, 5, 7, 9], [0, 12], [0, 3, 3, 3, 40, 41, 2]]
WINDOWS = [1, 2, 3, 5, 8]
EXITS = [(), (1,), (1, 3)]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("exits", EXITS)
def test_draft_equal_to_target_accepts_every_window(target_model, window, exits):
    decoder = build_decoder(target_model, twin(target_model), window=window, exits=exits)
    for prompt in PROMPTS:
        result = decoder.generate(prompt, max_tokens=24)
        assert result.token_ids == oracle_greedy(target_model, prompt, 24)
        m = result.metrics
        # Nothing is rejected; only the last window can be cut short by max_tokens.
        assert 0 <= m.drafted - m.accepted < window
        assert m.mean_accepted_len == pytest.approx(m.accepted / m.rounds)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("exits", EXITS)
def test_rejections_at_known_positions(target_model, window, exits):
    prompt = PROMPTS[0]
    positions = {len(prompt) + 2, len(prompt) + 3, len(prompt) + 9, len(prompt) + 15}
    draft = PerturbedDraft(twin(target_model), positions, target_model.config.vocab_size)
    decoder = build_decoder(target_model, None, window=window, exits=exits, draft_engine=draft)
    result = decoder.generate(prompt, max_tokens=20)
    assert result.token_ids == oracle_greedy(target_model, prompt, 20)
    # Every perturbed position inside the output was drafted and rejected, so acceptance is below 100 %.
    assert result.metrics.accepted < result.metrics.drafted


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("exits", EXITS)
def test_unrelated_draft(target_model, unrelated_draft_model, window, exits):
    decoder = build_decoder(target_model, unrelated_draft_model, window=window, exits=exits)
    for prompt in PROMPTS:
        assert decoder.generate(prompt, max_tokens=20).token_ids == oracle_greedy(target_model, prompt, 20)


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("eos_index", [0, 1, 2, 6, 7])
def test_eos_inside_a_window(target_model, window, eos_index):
    """EOS chosen as the token the target emits at generated position `eos_index`: output stops there."""
    prompt = PROMPTS[0]
    free_run = oracle_greedy(target_model, prompt, 12)
    eos = free_run[eos_index]
    expected = oracle_greedy(target_model, prompt, 12, eos=eos)
    assert expected[-1] == eos and len(expected) <= eos_index + 1
    for draft in (twin(target_model), None):
        engine = None if draft is not None else PerturbedDraft(twin(target_model), {len(prompt) + 1}, 64)
        decoder = build_decoder(target_model, draft, window=window, exits=(2,), eos=eos, draft_engine=engine)
        result = decoder.generate(prompt, max_tokens=12)
        assert result.token_ids == expected
        assert result.finish_reason == "stop"


@pytest.mark.parametrize("window", [2, 4, 7])
@pytest.mark.parametrize("max_tokens", [1, 2, 3, 4, 5, 6, 9, 10, 11])
def test_max_tokens_inside_a_window(target_model, window, max_tokens):
    prompt = PROMPTS[1]
    decoder = build_decoder(target_model, twin(target_model), window=window, exits=(2,))
    result = decoder.generate(prompt, max_tokens=max_tokens)
    assert result.token_ids == oracle_greedy(target_model, prompt, max_tokens)
    assert len(result.token_ids) == max_tokens
    assert result.finish_reason == "length"


def test_preemption_off_gives_the_same_output(target_model, unrelated_draft_model):
    for preempt in (True, False):
        decoder = build_decoder(target_model, unrelated_draft_model, window=4, exits=(2,), preempt=preempt)
        assert decoder.generate(PROMPTS[2], max_tokens=30).token_ids == oracle_greedy(
            target_model, PROMPTS[2], 30
        )
