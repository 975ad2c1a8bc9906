"""Code both sides import: protocol messages, verification math, sampling, hashing, KV cache, models."""

from shared.errors import ProtocolError
from shared.hashing import ids_hash, vocab_hash
from shared.kv import CachedLM
from shared.protocol import PROTOCOL_VERSION
from shared.sampling import SamplingParams, SparseProposal
from shared.verification import RoundUniforms, VerifyOutcome, greedy_verify, speculative_verify, verify_window

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
