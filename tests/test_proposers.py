"""Prompt-lookup (n-gram) proposals and their combination with the draft model: what they propose, and that
speculation with them stays exact (greedy: token for token; sampled: a chi-square test on the output law)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.target_session import TargetSession
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from edge_client.proposers import (
    CombinedProposer,
    NgramProposer,
    make_proposer,
    ngram_lookup,
    split_draft_name,
)
from shared.sampling import SamplingParams, target_probs
from shared.tiny import tiny_llama
from tests.helpers import build_decoder, oracle_greedy, twin

GREEDY = SamplingParams()


def test_lookup_copies_what_followed_the_latest_match():
    #         0  1  2  3  4  5  6  7  8  9
    prefix = [1, 2, 3, 9, 1, 2, 3, 4, 5, 1, 2, 3]
    # Suffix (1, 2, 3): latest earlier occurrence starts at 4, followed by 4, 5, 1, …
    assert ngram_lookup(prefix, 3) == [4, 5, 1]
    assert ngram_lookup(prefix, 10) == [4, 5, 1, 2, 3]  # never past the prefix's end
    assert ngram_lookup([7, 8, 9], 4) == []  # nothing repeats
    # Longest n first: (5, 6, 7) has no earlier match, (6, 7) has.
    assert ngram_lookup([6, 7, 1, 5, 6, 7], 2, max_ngram=3, min_ngram=2) == [1, 5]
    assert ngram_lookup([6, 7, 1, 5, 6, 7], 2, max_ngram=3, min_ngram=3) == []


def test_proposer_windows_and_sampling_proposals():
    proposer = NgramProposer()
    assert proposer.draft([1, 2, 3], 4, GREEDY) is None
    window = proposer.draft([1, 2, 3, 1, 2], 4, GREEDY)
    assert window is not None and window.tokens == (3, 1, 2) and window.proposals is None
    sampled = proposer.draft([1, 2, 3, 1, 2], 2, SamplingParams(temperature=0.7, seed=3))
    assert sampled is not None and sampled.tokens == (3, 1)
    # Deterministic: q′ = 1 on the copied token, which is what the protocol's `q` carries.
    assert [(p.ids, p.p) for p in sampled.proposals] == [((3,), (1.0,)), ((1,), (1.0,))]
    message = sampled.to_message(round=1)
    assert message.q is not None and [e.p for e in message.q] == [[1.0], [1.0]]
    with pytest.raises(ValueError):
        NgramProposer(max_ngram=1, min_ngram=2)


def test_combined_picks_ngram_when_it_matches(target_model):
    combined = CombinedProposer(DraftEngine(twin(target_model)))
    repeated = combined.draft([0, 5, 7, 9, 0, 5], 3, GREEDY)
    assert repeated is not None and repeated.tokens == (7, 9, 0)
    fresh = combined.draft([0, 5, 7, 9], 3, GREEDY)
    assert fresh is not None and len(fresh.tokens) == 3
    assert combined.served == {"ngram": 1, "model": 1}


def test_draft_names():
    assert split_draft_name("smollm2-135m-draft+ngram") == ("smollm2-135m-draft", True)
    assert split_draft_name("/some/path") == ("/some/path", False)
    engine = DraftEngine(tiny_llama(1, vocab_size=64, hidden_size=32, layers=1))
    assert make_proposer(engine, ngram=False) is engine
    assert isinstance(make_proposer(engine, ngram=True), CombinedProposer)


REPEATING_PROMPTS = [[0, 5, 7, 9, 11, 0, 5, 7], [3, 3, 3, 3], [0, 3, 3, 3, 40, 41, 2, 3, 3, 40]]


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("exits", [(), (2,)])
def test_greedy_output_equals_generate_with_combined_proposer(
    target_model, unrelated_draft_model, window, exits
):
    proposer = CombinedProposer(DraftEngine(unrelated_draft_model))
    decoder = build_decoder(target_model, None, window=window, exits=exits, draft_engine=proposer)
    for prompt in REPEATING_PROMPTS:
        result = decoder.generate(prompt, max_tokens=24)
        assert result.token_ids == oracle_greedy(target_model, prompt, 24)
    assert proposer.served["ngram"] > 0 and proposer.served["model"] > 0


# -- sampled: the output law with the combined proposer equals the target's ------------------------------

VOCAB = 8
PROMPT = [0, 3, 5, 0, 3]  # the suffix (3, x1) repeats whenever x1 = 5: both proposers serve rounds
N_RUNS = 1200
ALPHA = 1e-3


@pytest.fixture(scope="module")
def sampling_models():
    target = tiny_llama(10, vocab_size=VOCAB, hidden_size=16, layers=2, heads=2, init_std=0.5)
    draft = copy.deepcopy(target)
    noise = torch.randn(
        draft.lm_head.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    with torch.no_grad():
        draft.lm_head.weight.add_(0.6 * noise)
    return target, draft


def _exact_joint(target, params: SamplingParams) -> np.ndarray:
    """P(x2, x3) of the target alone (x1 marginalised)."""

    def dist(prefix):
        with torch.no_grad():
            logits = target(torch.tensor([prefix])).logits[0, -1]
        return target_probs(logits[None], params)[0].numpy()

    joint = np.zeros((VOCAB, VOCAB))
    p1 = dist(PROMPT)
    for x1 in np.flatnonzero(p1):
        p2 = dist([*PROMPT, x1])
        for x2 in np.flatnonzero(p2):
            joint[x2] += p1[x1] * p2[x2] * dist([*PROMPT, x1, x2])
    return joint


@pytest.mark.parametrize("residual_ok", [True, False], ids=["combined", "control-wrong-residual"])
def test_sampled_output_law_with_combined_proposer(sampling_models, residual_ok, monkeypatch):
    import shared.verification as verification

    target, draft = sampling_models
    params = SamplingParams(temperature=1.0)
    if not residual_ok:  # the control: the same test must see a broken residual
        monkeypatch.setattr(verification, "residual_distribution", lambda p, q: p)
    session = TargetSession(EarlyExitTarget(target, ExitHeads.untrained((1,), 16).double()), eos_ids=[])
    proposer = CombinedProposer(DraftEngine(draft))
    decoder = SpeculativeDecoder(proposer, session, window=2)
    n = N_RUNS if residual_ok else N_RUNS // 2
    counts = np.zeros((VOCAB, VOCAB))
    for seed in range(n):
        result = decoder.generate(PROMPT, max_tokens=3, sampling=params.model_copy(update={"seed": seed}))
        counts[result.token_ids[1], result.token_ids[2]] += 1
    expected = _exact_joint(target, params).ravel() * n
    observed = counts.ravel()
    assert observed[expected == 0].sum() == 0
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    _, p_value = stats.chisquare(obs[keep], exp[keep])
    assert proposer.served["ngram"] >= n // 10, proposer.served  # the n-gram path really ran
    if residual_ok:
        assert p_value > ALPHA, f"output law differs from the target's (p={p_value:.2e})"
    else:
        assert p_value < ALPHA, f"the wrong residual went unnoticed (p={p_value:.2e})"
