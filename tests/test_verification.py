"""The verification math as pure functions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ProtocolError
from shared.hashing import ids_hash, vocab_hash_of
from shared.sampling import (
    SamplingParams,
    SparseProposal,
    keyed_uniform,
    sample_from_proposal,
    target_probs,
    truncated_proposal,
)
from shared.verification import (
    RoundUniforms,
    greedy_verify,
    residual_distribution,
    sample_inverse_cdf,
    speculative_verify,
)


def one_hot_logits(argmaxes: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(argmaxes), vocab, dtype=torch.float64)
    for row, token in enumerate(argmaxes):
        logits[row, token] = 5.0
    return logits


@pytest.mark.parametrize(
    ("argmaxes", "draft", "expected"),
    [
        ([1, 2, 3, 4], [1, 2, 3], (3, 4)),  # full window: bonus
        ([1, 2, 3, 4], [0, 2, 3], (0, 1)),  # first token rejected: correction
        ([1, 2, 3, 4], [1, 2, 5], (2, 3)),  # last token rejected
        ([5], [], (0, 5)),  # empty window degenerates to one target step
    ],
)
def test_greedy_verify(argmaxes, draft, expected):
    outcome = greedy_verify(one_hot_logits(argmaxes), draft)
    assert (outcome.accepted, outcome.token) == expected


def test_greedy_verify_checks_rows():
    with pytest.raises(ValueError, match="rows"):
        greedy_verify(one_hot_logits([1, 2]), [1, 2])


def test_inverse_cdf_never_picks_zero_probability_tokens():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    picks = {sample_inverse_cdf(probs, u) for u in [0.0, 0.25, 0.4999, 0.5, 0.75, 0.999999999]}
    assert picks == {1, 3}
    with pytest.raises(ValueError):
        sample_inverse_cdf(torch.zeros(3, dtype=torch.float64), 0.5)


@given(
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_residual_is_a_distribution_on_where_p_exceeds_q(p_raw, q_raw):
    p = torch.tensor(p_raw, dtype=torch.float64) + 1e-3
    q = torch.tensor(q_raw, dtype=torch.float64) + 1e-3
    p, q = p / p.sum(), q / q.sum()
    r = residual_distribution(p, q)
    assert torch.isclose(r.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (r >= 0).all()
    if not torch.allclose(p, q):
        assert (r[p <= q] == 0).all()


def exact_one_step_law(p: torch.Tensor, q_dense: torch.Tensor) -> torch.Tensor:
    """Law of the first emitted token for a window of one drafted token x ~ q: must equal p."""
    accept = torch.minimum(q_dense, p)
    reject_mass = 1.0 - accept.sum()
    return accept + reject_mass * residual_distribution(p, q_dense)


def test_speculative_sampling_identity_holds_for_sparse_proposals():
    """min(q, p) + (1 − Σ min(q, p)) · norm(max(0, p − q)) = p, also when q′ is truncated to a top-k."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = torch.softmax(torch.randn(12, generator=gen, dtype=torch.float64) * 2, -1)
        proposal = truncated_proposal(torch.randn(12, generator=gen, dtype=torch.float64) * 2, 1.0, q_top_k=5)
        torch.testing.assert_close(exact_one_step_law(p, proposal.dense(12)), p)


def test_speculative_verify_monte_carlo_first_token_law():
    """Drive the real function with many uniforms: the first emitted token's law is p."""
    gen = torch.Generator().manual_seed(1)
    p_row = torch.softmax(torch.randn(6, generator=gen, dtype=torch.float64) * 2, -1)
    probs = torch.stack([p_row, p_row])
    proposal = truncated_proposal(torch.randn(6, generator=gen, dtype=torch.float64) * 2, 1.0, q_top_k=4)
    counts = torch.zeros(6, dtype=torch.float64)
    n = 40_000
    for i in range(n):
        u = RoundUniforms.draw(gen, 1)
        x = sample_from_proposal(proposal, keyed_uniform(99, i))
        outcome = speculative_verify(probs, [x], [proposal], u)
        counts[x if outcome.accepted == 1 else outcome.token] += 1
    # 5 standard errors on each cell.
    assert torch.all((counts / n - p_row).abs() < 5 * torch.sqrt(p_row * (1 - p_row) / n))


def test_speculative_verify_rejects_a_token_outside_its_proposal():
    probs = torch.full((2, 4), 0.25, dtype=torch.float64)
    proposal = SparseProposal(ids=(0, 1), p=(0.5, 0.5))
    with pytest.raises(ValueError, match="not in its proposal"):
        speculative_verify(probs, [3], [proposal], RoundUniforms(accept=(0.5,), token=0.5))


def test_an_exit_with_the_targets_distribution_predicts_every_verdict():
    """The early prediction and the final test agree whenever their distributions agree, because a round
    draws its uniforms once and both use them. The exit here sees exactly the target's distribution: the
    layer after it is switched off (zero output projections: the residual passes through unchanged), and
    an untrained head reads the hidden state with the model's own norm and LM head. Were the early
    prediction to draw uniforms of its own, sampled rounds would disagree within a few rounds."""
    from cloud_server.engine import EarlyExitTarget, ExitHeads, TargetSession
    from edge_client.draft import DraftEngine
    from shared.tiny import tiny_llama

    target = tiny_llama(0, vocab_size=16, hidden_size=16, layers=2, init_std=0.05)
    with torch.no_grad():
        target.model.layers[1].self_attn.o_proj.weight.zero_()
        target.model.layers[1].mlp.down_proj.weight.zero_()
    session = TargetSession(EarlyExitTarget(target, ExitHeads.untrained((1,), 16).double()), eos_ids=[])
    draft = DraftEngine(tiny_llama(1, vocab_size=16, hidden_size=16, layers=1, init_std=0.05))
    agreed, rejections = 0, 0
    for seed in range(6):
        sampling = SamplingParams(temperature=1.0, seed=seed)
        session.start([1, 2, 3], sampling, max_tokens=30)
        while not session.finished:
            window = draft.draft(session.committed, 3, sampling)
            earlies = []
            verdict = session.verify(window.to_message(session.round + 1), earlies.append)
            (early,) = earlies
            if verdict.finished:  # max_tokens cut this verdict; the prediction does not apply the cut
                break
            assert (early.accepted, early.token) == (verdict.accepted, verdict.token)
            agreed += 1
            rejections += verdict.accepted < len(window.tokens)
    assert agreed > 30 and rejections >= 5  # rounds where the shared uniforms decided a rejection


def test_proposal_is_float32_truncated_and_contains_its_draws():
    logits = torch.randn(100, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    proposal = truncated_proposal(logits, 0.8, q_top_k=32)
    assert len(proposal.ids) == 32
    assert all(float(torch.tensor(p, dtype=torch.float32)) == p for p in proposal.p)
    assert set(proposal.ids) == set(torch.topk(logits, 32).indices.tolist())
    for pos in range(200):
        assert sample_from_proposal(proposal, keyed_uniform(1, pos)) in proposal.ids


def test_keyed_uniform_is_deterministic_and_spread():
    values = [keyed_uniform(7, pos) for pos in range(5000)]
    assert values == [keyed_uniform(7, pos) for pos in range(5000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.02
    assert keyed_uniform(8, 0) != keyed_uniform(7, 0)


def test_target_probs_match_transformers_order():
    """temperature → top-k → top-p, as generate() applies them."""
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    probs = target_probs(logits, SamplingParams(temperature=1.0, top_k=3))[0]
    assert (probs[3:] == 0).all() and torch.isclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    probs = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))[0]  # 0.64 + 0.23 ≥ 0.8
    assert probs.nonzero().flatten().tolist() == [0, 1]
    with pytest.raises(ValueError):
        target_probs(logits, SamplingParams())


def test_hashes():
    assert ids_hash([1, 2, 3]) == ids_hash([1, 2, 3]) != ids_hash([1, 2])
    assert len(ids_hash([])) == 16
    # Sorted by id, so dict order does not matter.
    assert (
        vocab_hash_of({"a": 0, "b": 1}) == vocab_hash_of({"b": 1, "a": 0}) != vocab_hash_of({"a": 1, "b": 0})
    )


def test_protocol_error_is_retryable_only_when_it_should_be():
    assert not ProtocolError("bad_round", "x").retryable
    assert ProtocolError("limit_exceeded", "x").retryable


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**62), st.integers(0, 10**9))
def test_keyed_uniform_range(seed, pos):
    assert 0.0 <= keyed_uniform(seed, pos) < 1.0
