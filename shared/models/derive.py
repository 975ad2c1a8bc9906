"""Models built from another model rather than downloaded: the provisional truncated draft, and a base with
a shipped LoRA adapter merged in (the planner models)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch

from shared.models._progress import status
from shared.models.convert import quiet_hf_progress
from shared.models.store import staged_model_dir

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def build_truncated_draft(
    base_dir: Path,
    dest: Path,
    *,
    num_layers: int,
    marker: dict[str, Any],
    progress: bool = True,
    replace: bool = False,
) -> Path:
    """Save at `dest` a float32 copy of `base_dir`'s model keeping only decoder layers 0..num_layers-1.

    Embedding, final norm and LM head (tied or not, as in the base) are the base's own weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with (
        status(f"Building {dest.name} ({num_layers} layers of {base_dir.name})…", enabled=progress),
        quiet_hf_progress(),
    ):
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        config = copy.deepcopy(base.config)
        if num_layers > config.num_hidden_layers:
            raise ValueError(f"{base_dir.name} has only {config.num_hidden_layers} layers, not {num_layers}")
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:num_layers]
        draft = AutoModelForCausalLM.from_config(config).to(torch.float32)
        state = {
            key: value
            for key, value in base.state_dict().items()
            if (m := _LAYER_KEY.search(key)) is None or int(m.group(1)) < num_layers
        }
        draft.load_state_dict(state, strict=True)
        draft.generation_config = copy.deepcopy(base.generation_config)
        draft.eval()
        with staged_model_dir(dest, marker, replace=replace) as stage:
            draft.save_pretrained(stage)
            tokenizer.save_pretrained(stage)
    return dest


def build_merged_adapter(
    base_dir: Path,
    adapter: Path,
    dest: Path,
    *,
    marker: dict[str, Any],
    progress: bool = True,
    replace: bool = False,
) -> Path:
    """Save at `dest` `base_dir`'s model with the LoRA adapter in `adapter` merged into its weights, in the
    base's own dtype (a plain transformers folder: nothing downstream needs peft)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with (
        status(f"Building {dest.name} ({base_dir.name} + {adapter.name})…", enabled=progress),
        quiet_hf_progress(),
    ):
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.generation_config = copy.deepcopy(base.generation_config)
        merged.eval()
        with staged_model_dir(
            dest, marker | {"dtype": str(merged.dtype).removeprefix("torch.")}, replace=replace
        ) as stage:
            merged.save_pretrained(stage)
            tokenizer.save_pretrained(stage)
    return dest
