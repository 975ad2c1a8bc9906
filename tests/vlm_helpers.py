"""VLM test helpers: frames, prompts laid out by each family's processor, and the target's own generate()."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from shared.vlm import image_placeholder_text, prompt_with_images


def frame(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A random RGB frame (width, height)."""
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_prompt(processor, images: Sequence[Image.Image], text: str = "what now?") -> list[int]:
    """`text` after the images' placeholders, expanded by the processor (what an edge sends)."""
    return prompt_with_images(
        processor, f"look {image_placeholder_text(processor, len(images))} {text}", images
    )


def oracle_vlm_greedy(model, processor, prompt_ids: Sequence[int], images, max_new_tokens: int, eos=None):
    """The VLM alone: its own generate(do_sample=False) on the processor's pixel inputs for `images`."""
    pixels = processor.image_processor(list(images), return_tensors="pt") if images else {}
    ids = torch.tensor([list(prompt_ids)])
    kwargs = {k: v for k, v in pixels.items()}
    if "image_grid_thw" in kwargs:
        kwargs["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
    if "pixel_values" in kwargs:
        kwargs["pixel_values"] = kwargs["pixel_values"].to(model.dtype)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=eos if eos is not None else 0,
        **kwargs,
    )
    return out[0, len(prompt_ids) :].tolist()
