"""The target engine: the early-exit target, its exit heads, generations (speculative and
autoregressive), session records and the inference worker. No web framework is imported here: the
in-process decoder, the benchmarks and the training commands use this door, the server uses it too.
"""

from cloud_server.engine.autoregressive import AutoregressiveGeneration
from cloud_server.engine.early_exit import EarlyExitTarget, ExitCallback, decoder_layers
from cloud_server.engine.exits import (
    SHORTLIST_NAME,
    AdapterKind,
    ExitAdapter,
    ExitConfig,
    ExitHeads,
    check_heads_fit,
    exit_logits,
    model_fingerprint,
    resolve_exit_heads,
    shipped_exit_heads,
)
from cloud_server.engine.loading import LoadedTarget, eos_ids_of, load_target
from cloud_server.engine.sessions import DetachedRecord, SessionStore
from cloud_server.engine.target_session import EarlyCallback, EngineLimits, TargetSession
from cloud_server.engine.worker import InferenceWorker

__all__ = [
    "AdapterKind",
    "AutoregressiveGeneration",
    "DetachedRecord",
    "EarlyCallback",
    "EarlyExitTarget",
    "EngineLimits",
    "ExitAdapter",
    "ExitCallback",
    "ExitConfig",
    "ExitHeads",
    "InferenceWorker",
    "LoadedTarget",
    "SHORTLIST_NAME",
    "SessionStore",
    "TargetSession",
    "check_heads_fit",
    "decoder_layers",
    "eos_ids_of",
    "exit_logits",
    "load_target",
    "model_fingerprint",
    "resolve_exit_heads",
    "shipped_exit_heads",
]
