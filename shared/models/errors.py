"""The one exception of the model registry, with stable error codes."""

from __future__ import annotations

from typing import Literal

ModelErrorCode = Literal[
    "unknown_model",
    "download_failed",
    "hash_mismatch",
    "disk_full",
    "bad_model_path",
    "not_pulled",
    "conversion_failed",
]


class ModelError(Exception):
    """A model could not be found, fetched, verified or converted; `code` is stable across versions."""

    def __init__(self, code: ModelErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ModelErrorCode = code
        self.message = message
