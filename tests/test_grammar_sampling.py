"""Speculative sampling under a grammar reproduces the target's masked distribution: the chi-square test
of tests/test_sampling_exact.py (same power statement, same machinery), with the target's logits masked
by the grammar before the warpers, as `generate()` with the grammar as a logits processor samples.

An 8-id vocabulary: 4 specials (EOS = 2) and the tokens "a", "b", "c", "ab". The grammar needs at least
six characters, so EOS is forbidden at x1..x3 and allowed at x4 only after three "ab"; each position
forbids a different subset, and "ab" makes one text tokenise in several ways.
"""

from __future__ import annotations

import pytest
import torch

from shared.sampling import SamplingParams
from tests.helpers import GrammarLogitsProcessor, bytelevel_tokenizer
from tests.test_sampling_exact import (
    ALPHA,
    PROMPT,
    VOCAB,
    chi_square,
    detectable_distance,
    exact_joint,
    models,  # noqa: F401  (the fixture: the target and its noisy draft)
    sample_joint,
)

GRAMMAR = {"regex": "[ab][bc][ac][abc][abc][abc]+"}
# Fewer runs than the unconstrained test (the power is still stated and asserted: see detectable_distance).
RUNS = 1500


@pytest.fixture(scope="module")
def tok():
    tokenizer = bytelevel_tokenizer(extra_tokens=("ab",), alphabet=("a", "b", "c"))
    assert len(tokenizer) == VOCAB
    return tokenizer


def oracle_mask(tok):
    """allowed(generated) from the oracle's own llguidance processor (tests/helpers.py)."""

    def allowed(generated: list[int]) -> torch.Tensor:
        processor = GrammarLogitsProcessor(tok, GRAMMAR, len(PROMPT), VOCAB, eos=2)
        scores = processor(torch.tensor([[*PROMPT, *generated]]), torch.zeros(1, VOCAB))
        return torch.isfinite(scores[0])

    return allowed


@pytest.mark.parametrize(
    ("params", "draft_grammar"),
    [(SamplingParams(temperature=1.0), True), (SamplingParams(temperature=0.8, top_k=3), False)],
    ids=["T1-draft-with-grammar", "T0.8-k3-draft-unconstrained"],
)
def test_sampling_under_a_grammar_matches_the_masked_target_distribution(models, tok, params, draft_grammar):  # noqa: F811
    target, draft = models
    allowed = oracle_mask(tok)
    expected = exact_joint(target, params, allowed)
    # The grammar bites: pairs the unmasked target produces are impossible, and the law moves.
    unmasked = exact_joint(target, params)
    assert ((expected == 0) & (unmasked > 1e-3)).sum() >= 10
    assert abs(expected - unmasked).sum() > 0.2
    counts, rejection_rate = sample_joint(
        target,
        draft,
        params,
        RUNS,
        grammar=GRAMMAR,
        tokenizer=tok,
        draft_tokenizer=tok if draft_grammar else None,
    )
    p_value, df = chi_square(counts, expected)
    print(
        f"{params} draft grammar={draft_grammar}: p={p_value:.3f} df={df} rejection={rejection_rate:.2f} "
        f"detectable chi2 distance={detectable_distance(df, RUNS):.4f}"
    )
    assert rejection_rate >= 0.2, (
        f"draft too close to the target for a meaningful test ({rejection_rate:.2f})"
    )
    assert detectable_distance(df, RUNS) <= 0.05
    assert p_value > ALPHA, f"output law differs from the masked target's (p={p_value:.2e}, df={df})"


def test_sampling_without_the_mask_on_the_target_is_detected(models, tok):  # noqa: F811
    """Control: the same test sees the output of an unconstrained target (the grammar ignored)."""
    target, draft = models
    params = SamplingParams(temperature=1.0)
    counts, _ = sample_joint(target, draft, params, RUNS // 3)
    p_value, _ = chi_square_or_impossible(counts, exact_joint(target, params, oracle_mask(tok)))
    print(f"unmasked target: p={p_value:.2e}")
    assert p_value < ALPHA


def chi_square_or_impossible(counts, expected):
    """chi_square, but a sampled pair the grammar forbids is itself a detection (p = 0)."""
    if counts.ravel()[expected.ravel() == 0].sum() > 0:
        return 0.0, 0
    return chi_square(counts, expected)
