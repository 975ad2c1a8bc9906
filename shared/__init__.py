"""Code both sides import: protocol messages, verification math, sampling, hashing, KV cache, models,
workloads and the deployment defaults.

The names below load on first use, so that importing a light module of this package (e.g.
`shared.defaults` from the CLI) does not import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.errors import ProtocolError
    from shared.hashing import ids_hash, vocab_hash
    from shared.kv import CachedLM
    from shared.protocol import PROTOCOL_VERSION
    from shared.sampling import SamplingParams, SparseProposal
    from shared.verification import (
        RoundUniforms,
        VerifyOutcome,
        greedy_verify,
        speculative_verify,
        verify_window,
    )

_HOMES = {
    "PROTOCOL_VERSION": "shared.protocol",
    "CachedLM": "shared.kv",
    "ProtocolError": "shared.errors",
    "RoundUniforms": "shared.verification",
    "SamplingParams": "shared.sampling",
    "SparseProposal": "shared.sampling",
    "VerifyOutcome": "shared.verification",
    "greedy_verify": "shared.verification",
    "ids_hash": "shared.hashing",
    "speculative_verify": "shared.verification",
    "verify_window": "shared.verification",
    "vocab_hash": "shared.hashing",
}

__all__ = [
    "PROTOCOL_VERSION",
    "CachedLM",
    "ProtocolError",
    "RoundUniforms",
    "SamplingParams",
    "SparseProposal",
    "VerifyOutcome",
    "greedy_verify",
    "ids_hash",
    "speculative_verify",
    "verify_window",
    "vocab_hash",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
