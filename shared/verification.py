"""Verification math: pure functions over one window, shared by the final test and the early prediction.

A window of k draft tokens is verified against k + 1 rows of target logits: row i is the target's
distribution for the position of draft token i (row k is the bonus position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from shared.sampling import SamplingParams, SparseProposal, target_probs


@dataclass(frozen=True)
class VerifyOutcome:
    """`accepted` draft tokens, then the target's `token` (correction or bonus)."""

    accepted: int
    token: int


@dataclass(frozen=True)
class RoundUniforms:
    """The uniforms of one round: one acceptance test per draft token and one for the emitted token.

    They are drawn once per round and reused by every early prediction of that round, so an exit whose
    distribution equals the target's predicts the verdict exactly.
    """

    accept: tuple[float, ...]
    token: float

    @classmethod
    def draw(cls, generator: torch.Generator, k: int) -> RoundUniforms:
        u = torch.rand(k + 1, generator=generator, dtype=torch.float64).tolist()
        return cls(accept=tuple(u[:k]), token=u[k])


def sample_inverse_cdf(probs: torch.Tensor, u: float) -> int:
    """The token whose CDF interval (in id order) holds u · total; zero-probability ids are never chosen."""
    cdf = torch.cumsum(probs.to(torch.float64), dim=-1)
    total = cdf[-1]
    if not total > 0:
        raise ValueError("cannot sample from an all-zero distribution")
    target = torch.tensor([u], dtype=torch.float64, device=cdf.device) * total
    idx = int(torch.searchsorted(cdf, target, right=True).item())
    return min(idx, int(torch.nonzero(probs > 0)[-1].item()))


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p − q)): what the target samples after rejecting a draft token.

    When p ≤ q everywhere (possible only through rounding) the rejection had probability ~0; p is the
    limit of the residual then.
    """
    r = torch.clamp(p - q, min=0.0)
    total = r.sum()
    return r / total if total > 0 else p


def greedy_verify(logits: torch.Tensor, draft: Sequence[int]) -> VerifyOutcome:
    """Accept draft tokens while they equal the target's argmax (one argmax over the rows, one host sync)."""
    _check_shapes(logits, draft)
    argmax = logits.argmax(dim=-1).tolist()
    for i, token in enumerate(draft):
        if argmax[i] != token:
            return VerifyOutcome(accepted=i, token=argmax[i])
    return VerifyOutcome(accepted=len(draft), token=argmax[len(draft)])


def speculative_verify(
    probs: torch.Tensor,
    draft: Sequence[int],
    proposals: Sequence[SparseProposal],
    uniforms: RoundUniforms,
) -> VerifyOutcome:
    """Speculative sampling (Leviathan et al.; Chen et al.) with a sparse proposal q′ per draft token.

    Draft token x at row i is accepted when u_i · q′(x) < p_i(x); at the first rejection the token is
    drawn from the residual norm(max(0, p − q′)); after a full window, from p_k. Exact for any q′.
    """
    _check_shapes(probs, draft)
    return _speculative_rows(lambda i: probs[i], probs.shape[-1], draft, proposals, uniforms)


def _speculative_rows(
    row: Callable[[int], torch.Tensor],
    vocab: int,
    draft: Sequence[int],
    proposals: Sequence[SparseProposal],
    uniforms: RoundUniforms,
) -> VerifyOutcome:
    """The rejection test over rows produced on demand: rows after the first rejection are never built."""
    if len(proposals) != len(draft) or len(uniforms.accept) < len(draft):
        raise ValueError("one proposal and one acceptance uniform per draft token")
    for i, token in enumerate(draft):
        q_x = proposals[i].prob_of(token)
        if q_x <= 0.0:
            raise ValueError(f"draft token {token} at window position {i} is not in its proposal")
        p_i = row(i)
        p_x = float(p_i[token])
        if uniforms.accept[i] * q_x < p_x:
            continue
        r = residual_distribution(p_i, proposals[i].dense(vocab).to(p_i.device))
        return VerifyOutcome(accepted=i, token=sample_inverse_cdf(r, uniforms.token))
    return VerifyOutcome(accepted=len(draft), token=sample_inverse_cdf(row(len(draft)), uniforms.token))


def verify_window(
    logits: torch.Tensor,
    draft: Sequence[int],
    params: SamplingParams,
    proposals: Sequence[SparseProposal] | None = None,
    uniforms: RoundUniforms | None = None,
) -> VerifyOutcome:
    """Greedy or speculative verification of one window from raw logits [k + 1, V]."""
    if params.greedy:
        return greedy_verify(logits, draft)
    if proposals is None or uniforms is None:
        raise ValueError("sampling verification needs the draft's proposals and the round's uniforms")
    _check_shapes(logits, draft)
    rows = logits.detach()

    # Lazily, one row at a time, on the logits' device: a round that rejects at row i warps i + 1 rows,
    # not k + 1. The warping runs in float64 (the early/final coupling through shared uniforms compares
    # p against u · q′ and must not depend on rounding); each row's warp equals the batched one.
    def row(i: int) -> torch.Tensor:
        return target_probs(rows[i : i + 1], params)[0]

    return _speculative_rows(row, rows.shape[-1], draft, proposals, uniforms)


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The target's token from one row of logits [V]: argmax, or a draw with the session's generator."""
    if params.greedy:
        return int(logits.argmax().item())
    if generator is None:
        raise ValueError("sampling needs the session's generator")
    u = float(torch.rand(1, generator=generator, dtype=torch.float64).item())
    return sample_inverse_cdf(target_probs(logits.detach()[None], params)[0], u)


def _check_shapes(rows: torch.Tensor, draft: Sequence[int]) -> None:
    if rows.dim() != 2 or rows.shape[0] != len(draft) + 1:
        raise ValueError(
            f"need {len(draft) + 1} rows of logits for a window of {len(draft)}, got {tuple(rows.shape)}"
        )
