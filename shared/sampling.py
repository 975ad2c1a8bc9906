"""Sampling parameters, logit warping and the edge's truncated proposal q′.

The target's distribution is warped with transformers' own logits processors in transformers' order
(temperature → top-k → top-p), so "exact in distribution" means exact against `generate()`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

DEFAULT_Q_TOP_K = 32
# Below MIN_TEMPERATURE, logits / T overflows float64 (1e-307 gives inf - inf = NaN in the softmax);
# such a temperature means "greedy", which is temperature 0.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1 << 31


def _check_temperature(value: float) -> float:
    if value != 0.0 and not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
    return value


Temperature = Annotated[float, Field(ge=0.0, allow_inf_nan=False), AfterValidator(_check_temperature)]
"""A sampling temperature as the protocol and the HTTP routes accept it: finite, 0 or in a sane range."""
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=0, le=MAX_TOP_K)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class SamplingParams(BaseModel):
    """`sampling` of the protocol's `start`. temperature 0 = greedy; top_k 0 = off; top_p 1 = off."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    temperature: Temperature = 0.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    seed: Seed = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _warpers(params: SamplingParams) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=params.top_p))
    return warpers


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Rows of logits [n, V] → the target's sampling distributions [n, V] in float64.

    Only for temperature > 0; greedy decisions use the raw logits' argmax.
    """
    if params.greedy:
        raise ValueError("target_probs is for sampling; greedy uses argmax of the logits")
    scores = _warpers(params)(None, logits.to(torch.float64))
    return torch.softmax(scores, dim=-1)


@dataclass(frozen=True)
class SparseProposal:
    """The truncated proposal q′ for one draft position: ids and float32-rounded probabilities.

    Both sides normalise by the float64 sum of `p`, so rounding to float32 never biases the test.
    """

    ids: tuple[int, ...]
    p: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.p) or not self.ids:
            raise ValueError("proposal needs one probability per id and at least one id")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("proposal ids must be distinct")
        if any(not (x >= 0.0) for x in self.p) or sum(self.p) <= 0.0:
            raise ValueError("proposal probabilities must be non-negative with a positive sum")

    def prob_of(self, token: int) -> float:
        total = sum(self.p)
        for i, p in zip(self.ids, self.p, strict=True):
            if i == token:
                return p / total
        return 0.0

    def dense(self, vocab_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        q = torch.zeros(vocab_size, dtype=dtype)
        q[list(self.ids)] = torch.tensor(self.p, dtype=dtype)
        return q / q.sum()


def truncated_proposal(
    logits: torch.Tensor, temperature: float, q_top_k: int = DEFAULT_Q_TOP_K
) -> SparseProposal:
    """The edge's proposal from its own logits [V]: same temperature, top `q_top_k`, renormalised, float32."""
    if temperature <= 0.0:
        raise ValueError("a proposal is only sent when sampling (temperature > 0)")
    probs = torch.softmax(logits.to(torch.float64) / temperature, dim=-1)
    k = min(q_top_k, probs.shape[-1])
    top_p, top_ids = torch.topk(probs, k)
    top_p = (top_p / top_p.sum()).to(torch.float32)
    keep = top_p > 0
    return SparseProposal(ids=tuple(top_ids[keep].tolist()), p=tuple(top_p[keep].tolist()))


def sample_from_proposal(proposal: SparseProposal, u: float) -> int:
    """Inverse-CDF draw from q′ in its listed order with a uniform u in [0, 1)."""
    total = sum(proposal.p)
    acc = 0.0
    for token, p in zip(proposal.ids, proposal.p, strict=True):
        acc += p / total
        if u < acc:
            return token
    return proposal.ids[-1]


def keyed_uniform(seed: int, position: int) -> float:
    """A uniform in [0, 1) that depends only on (seed, position).

    The edge keys its draft randomness this way so that a window pre-drafted from a predicted prefix and
    one drafted after the verdict are identical when their prefixes are (DESIGN.md, "Sampling").
    """
    digest = hashlib.sha256(struct.pack("<qq", seed, position)).digest()
    return (int.from_bytes(digest[:8], "little") >> 11) / float(1 << 53)
