"""GGUF file -> float32 safetensors folder (model + tokenizer), published atomically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from shared.models._progress import status
from shared.models.errors import ModelError
from shared.models.store import staged_model_dir


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' tqdm bars (our own status line covers the step)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantisation loop uses tqdm directly, which disable_progress_bar does not reach.
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def gguf_fp32_bytes(gguf_path: Path) -> int:
    """Size of the float32 weights a GGUF expands to (from its tensor shapes; no tensor data is read)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf_path)
    except Exception as exc:  # gguf raises ValueError/struct errors/etc. on anything that is not a GGUF
        raise ModelError("bad_model_path", f"{gguf_path} is not a readable GGUF file: {exc}") from exc
    return 4 * sum(int(t.n_elements) for t in reader.tensors)


def convert_gguf(
    gguf_path: Path, dest: Path, *, marker: dict[str, Any], progress: bool = True, replace: bool = False
) -> Path:
    """Dequantise `gguf_path` to float32, save model and tokenizer as a transformers folder at `dest`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    with status(f"Converting {filename} to float32 safetensors…", enabled=progress), quiet_hf_progress():
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise ModelError("conversion_failed", f"transformers cannot load {gguf_path}: {exc}") from exc
        # A GGUF-loaded model carries a quantizer that refuses save_pretrained; the weights are plain fp32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with staged_model_dir(dest, marker, replace=replace) as stage:
            model.save_pretrained(stage)
            tokenizer.save_pretrained(stage)
    return dest
