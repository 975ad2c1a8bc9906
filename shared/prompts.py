"""A prompt as the target sees it: the plain tokenizer call, a chat template, or a VLM processor's layout.

One function for every caller (local and remote decoding, the robot planner, training) so that a prompt is
encoded the same way wherever it is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.vlm import image_placeholder_text, prompt_with_images


def encode_prompt(
    tokenizer, prompt: str, chat: bool, images: Sequence[Any] = (), processor: Any = None
) -> list[int]:
    """The plain tokenizer call, or the chat template with a generation prompt when `chat`.

    With `images` the VLM's processor lays the prompt out: the images' placeholders go first unless the
    prompt already holds them, then the processor expands them."""
    if images:
        if processor is None:
            raise ValueError("--image needs a vision-language model (this one has no image processor)")
        if processor.image_token not in prompt:
            prompt = f"{image_placeholder_text(processor, len(images))}\n{prompt}"
        if chat:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return prompt_with_images(processor, prompt, images)
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt).input_ids]
