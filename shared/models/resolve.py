"""Turning a model name or path into a local transformers folder, loading it, listing the known models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from shared.models import fetch
from shared.models.convert import convert_gguf, gguf_fp32_bytes
from shared.models.errors import ModelError
from shared.models.pull import pull_model, shipped_model_path
from shared.models.registry import KNOWN_MODELS, get_known_model, shipped_dir, source_requirements
from shared.models.store import dir_size, eespec_home, is_complete, model_dir, models_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_model(name_or_path: str | Path, *, pull: bool = True, progress: bool = True) -> Path:
    """A known name -> its cached folder (pulled on first use when `pull`); a folder holding a config.json
    -> itself; a ``.gguf`` file -> a float32 folder converted once into ``$EESPEC_HOME/models/gguf-<sha>``.
    """
    if isinstance(name_or_path, str) and name_or_path in KNOWN_MODELS:
        if KNOWN_MODELS[name_or_path].is_shipped:
            return shipped_model_path(KNOWN_MODELS[name_or_path])
        dest = model_dir(name_or_path)
        if is_complete(dest):
            return dest
        if not pull:
            raise ModelError("not_pulled", f"{name_or_path} is not in {models_dir()}; pull it first")
        return pull_model(name_or_path, progress=progress)

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise ModelError("bad_model_path", f"{path} is a folder without a config.json")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _convert_gguf_file(path, progress=progress)
        raise ModelError("bad_model_path", f"{path} is neither a model folder nor a .gguf file")
    if isinstance(name_or_path, str) and not _looks_like_path(name_or_path):
        get_known_model(name_or_path)  # raises unknown_model with the list of known names
    raise ModelError("bad_model_path", f"{path} does not exist")


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith(("~", ".")) or text.lower().endswith(".gguf")


def _convert_gguf_file(path: Path, *, progress: bool) -> Path:
    sha = fetch.sha256_file(path, progress=progress)
    dest = models_dir() / f"gguf-{sha[:16]}"
    if is_complete(dest):
        return dest
    home = eespec_home()
    fetch.check_disk_space(home, gguf_fp32_bytes(path))
    marker = {"name": dest.name, "source": f"gguf: {path.resolve()}", "sha256": sha, "dtype": "float32"}
    with fetch.enospc_as_disk_full(home):
        return convert_gguf(path, dest, marker=marker, progress=progress)


def load_model(
    name_or_path: str | Path, *, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve (pulling or converting if needed), then load the model in eval mode and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    path = resolve_model(name_or_path)
    # A vision-language model (its config has a vision tower) loads through its own auto class.
    vision = getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None
    if vision:
        import shared.vision_towers  # noqa: F401  (registers the project's own vision towers)
    auto_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = auto_class.from_pretrained(path, dtype=dtype)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def list_models() -> list[dict[str, Any]]:
    """One entry per known model: name, path, pulled, size_bytes (None unless pulled), description, source."""
    entries = []
    for name, known in KNOWN_MODELS.items():
        path = shipped_dir(known) if known.is_shipped else model_dir(name)
        pulled = (path / "config.json").is_file() if known.is_shipped else is_complete(path)
        entries.append(
            {
                "name": name,
                "path": str(path),
                "pulled": pulled,
                "size_bytes": dir_size(path) if pulled else None,
                "description": known.description,
                "source": source_requirements(known),
            }
        )
    return entries
