"""Speculative sampling reproduces the target's distribution (a chi-square test on two consecutive tokens).

Set-up: an 8-token vocabulary, a target and a draft that is the target with a noisy LM head (about half
of the draft tokens rejected), prompt fixed, `max_tokens=4`, window 2. x1 comes from the prefill; x2, x3
from the first window (accepted draft tokens or a correction from the residual), x4 is the bonus after a
fully accepted window or comes from a later round. So the joint law of (x3, x4) exercises two consecutive
acceptances, the residual and the bonus. Its expected value is computed exactly from the target:
Σ_{x1,x2} P(x1) P(x2 | x1) P(x3 | x1, x2) P(x4 | x1, x2, x3), warped as `generate()` warps.

Power: with N runs and m cells, the test rejects at level α = 0.001 with probability ≥ 0.9 whenever the
chi-square distance Σ (P' − P)² / P between the true output law P' and the target's P is at least
λ₀.₉ / N, where λ₀.₉ is the non-centrality giving 90 % power (computed below and asserted to be ≤ 0.05, i.e.
the test sees deviations far smaller than a wrong residual causes). The wrong-residual control shows it.
Runs are seeded 0..N-1, so the outcome is deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats

import shared.verification as verification
from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.target_session import TargetSession
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from shared.sampling import SamplingParams, target_probs
from shared.tiny import tiny_llama

VOCAB = 8
PROMPT = [0, 3, 5]
N_RUNS = 3000
ALPHA = 1e-3
SETTINGS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=4),
    SamplingParams(temperature=1.3, top_p=0.8),
]


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(10, vocab_size=VOCAB, hidden_size=16, layers=2, heads=2, init_std=0.5)
    draft = copy.deepcopy(target)
    noise = torch.randn(
        draft.lm_head.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    with torch.no_grad():
        draft.lm_head.weight.add_(0.6 * noise)
    return target, draft


def exact_joint(
    target, params: SamplingParams, allowed: Callable[[list[int]], torch.Tensor] | None = None
) -> np.ndarray:
    """P(x3, x4) under the target alone, marginalising x1 and x2; `allowed(generated)` masks the logits
    (structured output: ids outside it get -inf before the warpers)."""

    def dist(prefix):
        with torch.no_grad():
            logits = target(torch.tensor([prefix])).logits[0, -1]
        if allowed is not None:
            logits = logits.masked_fill(~allowed(prefix[len(PROMPT) :]), float("-inf"))
        return target_probs(logits[None], params)[0].numpy()

    joint = np.zeros((VOCAB, VOCAB))
    p1 = dist(PROMPT)
    for x1 in np.flatnonzero(p1):
        p2 = dist([*PROMPT, x1])
        for x2 in np.flatnonzero(p2):
            p3 = dist([*PROMPT, x1, x2])
            for x3 in np.flatnonzero(p3):
                joint[x3] += p1[x1] * p2[x2] * p3[x3] * dist([*PROMPT, x1, x2, x3])
    return joint


def sample_joint(
    target, draft, params: SamplingParams, n: int, *, grammar=None, tokenizer=None, draft_tokenizer=None
) -> tuple[np.ndarray, float]:
    """Counts of (x3, x4) over seeds 0..n-1; with `grammar`, the target (EOS 2) and, when given a
    `draft_tokenizer`, the draft apply it."""
    eos_ids = [2] if grammar is not None else []
    session = TargetSession(
        EarlyExitTarget(target, ExitHeads.untrained((1,), 16).double()), eos_ids=eos_ids, tokenizer=tokenizer
    )
    decoder = SpeculativeDecoder(DraftEngine(draft, tokenizer=draft_tokenizer), session, window=2)
    counts = np.zeros((VOCAB, VOCAB))
    drafted = accepted = 0
    for seed in range(n):
        sampling = params.model_copy(update={"seed": seed})
        result = decoder.generate(PROMPT, max_tokens=4, sampling=sampling, grammar=grammar)
        counts[result.token_ids[2], result.token_ids[3]] += 1
        drafted += result.metrics.drafted
        accepted += result.metrics.accepted
    return counts, 1.0 - accepted / drafted


def chi_square(counts: np.ndarray, expected_p: np.ndarray) -> tuple[float, int]:
    """p-value and degrees of freedom, pooling cells with expected count < 5 into one."""
    n = counts.sum()
    exp = expected_p.ravel() * n
    obs = counts.ravel()
    assert obs[exp == 0].sum() == 0, "a token pair the target can never produce was sampled"
    big = exp >= 5
    obs_b = np.append(obs[big], obs[~big].sum())
    exp_b = np.append(exp[big], exp[~big].sum())
    keep = exp_b > 0
    statistic, p_value = stats.chisquare(obs_b[keep], exp_b[keep])
    return float(p_value), int(keep.sum() - 1)


def detectable_distance(df: int, n: int, power: float = 0.9) -> float:
    """Smallest chi-square distance the test detects with `power` at level ALPHA with n samples."""
    crit = stats.chi2.ppf(1 - ALPHA, df)
    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if stats.ncx2.sf(crit, df, mid) < power else (lo, mid)
    return hi / n


@pytest.mark.parametrize("params", SETTINGS, ids=lambda p: f"T{p.temperature}-k{p.top_k}-p{p.top_p}")
def test_speculative_sampling_matches_target_distribution(models, params):
    target, draft = models
    expected = exact_joint(target, params)
    counts, rejection_rate = sample_joint(target, draft, params, N_RUNS)
    p_value, df = chi_square(counts, expected)
    print(
        f"{params}: p={p_value:.3f} df={df} rejection={rejection_rate:.2f} "
        f"detectable chi2 distance={detectable_distance(df, N_RUNS):.4f}"
    )
    assert rejection_rate >= 0.30, (
        f"draft too close to the target for a meaningful test ({rejection_rate:.2f})"
    )
    assert detectable_distance(df, N_RUNS) <= 0.05
    assert p_value > ALPHA, f"output law differs from the target's (p={p_value:.2e}, df={df})"


def test_wrong_residual_is_detected(models, monkeypatch):
    """Control: drawing the correction from p instead of norm(max(0, p − q′)) must fail the same test."""
    target, draft = models
    params = SETTINGS[0]
    monkeypatch.setattr(verification, "residual_distribution", lambda p, q: p)
    # A third of the runs suffice: at N_RUNS this control gave p ≈ 1e-87.
    counts, _ = sample_joint(target, draft, params, N_RUNS // 3)
    p_value, _ = chi_square(counts, exact_joint(target, params))
    print(f"wrong residual: p={p_value:.2e}")
    assert p_value < ALPHA


def test_cells_are_well_populated(models):
    """The test is not vacuous: the joint law spreads over many cells."""
    expected = exact_joint(models[0], SETTINGS[0])
    assert (expected * N_RUNS >= 5).sum() >= 20
    assert expected.max() < 0.5
