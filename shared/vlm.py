"""Vision-language models (`AutoModelForImageTextToText`) behind the same KV-cache interface as text LMs.

A VLM generation is a text generation whose prompt holds image placeholder tokens: the first forward (the
prefill, from an empty cache) carries the images' pixel tensors, every later forward only token ids. The
processor decides how many placeholders an image takes; `VisionInputs.build` checks that the prompt the
client sent holds exactly that many, so a wrong layout is the client's `bad_image`, never a model crash.

The Qwen2-VL / Qwen2.5-VL families place tokens with multimodal rotary positions (M-RoPE): the prefill's
positions come from the model's own `get_rope_index` (which needs `mm_token_type_ids`), later tokens sit
at their cache index plus the prompt's rope delta. The model object would cache that delta on itself
(`model.model.rope_deltas`), which is wrong as soon as two sessions share the model, so
`VisionCachedLM` keeps it per sequence and always passes `position_ids` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shared.errors import ProtocolError
from shared.kv import CachedLM

# Processor outputs that belong to the images (everything else is text: ids, masks).
PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes")


def is_vlm(model: Any) -> bool:
    """Whether `model` is a vision-language model (it has a vision config and image features)."""
    config = getattr(model, "config", None)
    return getattr(config, "vision_config", None) is not None and hasattr(model, "get_image_features")


def text_config(config: Any) -> Any:
    """The language model's config (the config itself for a text LM)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def uses_mrope(model: Any) -> bool:
    """Qwen2-VL style multimodal rotary positions (the inner model computes them with `get_rope_index`)."""
    return hasattr(getattr(model, "model", None), "get_rope_index")


def image_token_id(model: Any) -> int:
    config = model.config
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = getattr(config, "image_token_index", None)
    if token is None:
        raise TypeError(f"{type(model).__name__} has no image token id in its config")
    return int(token)


def language_decoder(model: Any) -> nn.Module:
    """The language model's decoder (`.layers`, `.norm`): `model.model` for a causal LM, else
    `get_decoder()` (a VLM's language model)."""
    inner = getattr(model, "model", None)
    if isinstance(getattr(inner, "layers", None), nn.ModuleList):
        return inner
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        decoder = getattr(decoder, "model", None)  # a wrapped causal LM (e.g. Idefics3's text model)
    if decoder is None or not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no decoder layer stack; early exits need one")
    return decoder


@dataclass
class VisionInputs:
    """The processed images of one prompt: pixel tensors for the prefill and the placeholder count."""

    tensors: dict[str, torch.Tensor]
    image_tokens: int
    images: int = 0

    @classmethod
    def build(
        cls, processor: Any, model: Any, images: Sequence[Any], prompt_ids: Sequence[int]
    ) -> VisionInputs:
        """Process `images` with the model's own processor; `bad_image` unless the prompt's placeholders
        are exactly the ones the processor lays out for them."""
        if processor is None:
            raise ProtocolError("bad_image", "this model takes no images")
        token = image_token_id(model)
        placeholder = getattr(processor, "image_token", None)
        if placeholder is None:
            raise ProtocolError("bad_image", "this model's processor has no image token")
        try:
            # The processor expands one placeholder per image into the layout the model expects.
            out = processor(text=[placeholder * len(images)], images=list(images), return_tensors="pt")
        except Exception as exc:
            raise ProtocolError("bad_image", "the model's processor rejected the images") from exc
        expected = int((out["input_ids"][0] == token).sum())
        given = sum(1 for t in prompt_ids if int(t) == token)
        if given != expected:
            raise ProtocolError(
                "bad_image",
                f"the prompt holds {given} image tokens; {len(images)} image(s) need {expected} "
                "(lay the prompt out with the model's processor)",
            )
        dtype = model.dtype
        tensors = {}
        for key in PIXEL_KEYS:
            if key in out:
                value = out[key]
                tensors[key] = (
                    value.to(model.device, dtype) if value.is_floating_point() else value.to(model.device)
                )
        return cls(tensors=tensors, image_tokens=expected, images=len(images))


def prompt_with_images(processor: Any, text: str, images: Sequence[Any]) -> list[int]:
    """The token ids of `text` with its image placeholders expanded by the processor (as an edge lays
    out a prompt before sending `token_ids` and `images`)."""
    if not images:
        return [int(t) for t in processor.tokenizer(text).input_ids]
    out = processor(text=[text], images=list(images), return_tensors="pt")
    return [int(t) for t in out["input_ids"][0]]


def image_placeholder_text(processor: Any, count: int) -> str:
    """The text that stands for `count` images in a prompt (before the processor expands it)."""
    token = processor.image_token
    # Qwen's processors expand the pad token between the vision start and end markers.
    start = getattr(processor.tokenizer, "vision_start_token", None) or (
        "<|vision_start|>" if token == "<|image_pad|>" else ""
    )
    end = "<|vision_end|>" if start else ""
    return "".join(f"{start}{token}{end}" for _ in range(count))


@dataclass
class _Rope:
    delta: torch.Tensor | None = None  # [1, 1]: M-RoPE position offset of tokens after the prompt


class VisionCachedLM(CachedLM):
    """`CachedLM` over a VLM: the forward from an empty cache carries the images, positions are explicit.

    `images` is set per generation (`set_images`); it survives `reset()`, so a re-prefill (a resumed or
    rolled-back generation) feeds the images again. A rollback into the image placeholders drops the
    whole cache: the next forward then starts from the beginning, with the images.
    """

    # The scheduler's packed forward (cloud_server.engine.batched) computes positions and feeds embeddings
    # itself: it knows neither the images nor the explicit (multimodal rotary) positions, so a VLM session's
    # rows always run through this cache's own forward.
    packable = False

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.images: VisionInputs | None = None
        self.mrope = uses_mrope(model)
        self.image_token = image_token_id(model)
        self._rope = _Rope()
        self._image_end = 0  # cached tokens up to the last image placeholder (0: none)

    def set_images(self, images: VisionInputs | None) -> None:
        self.reset()
        self.images = images

    def reset(self) -> None:
        super().reset()
        self._rope = _Rope()
        self._image_end = 0

    def sync(self, sequence: Sequence[int]) -> list[int]:
        limit = min(len(self.ids), len(sequence) - 1)
        common = 0
        while common < limit and self.ids[common] == sequence[common]:
            common += 1
        if 0 < common < self._image_end:
            common = 0  # an image cannot be cut in half: start again from the prefill
        self.truncate(common)
        return [int(t) for t in sequence[common:]]

    def truncate(self, length: int) -> None:
        if 0 < length < self._image_end:
            self.reset()
            return
        super().truncate(length)
        if length == 0:
            self.reset()

    def forward(self, new_ids: Sequence[int], keep: int = 1, keys_to: int | None = None) -> torch.Tensor:
        if keys_to is not None:  # a VLM's prefill is one forward (its image positions): never chunked
            raise ValueError("a VLM's prefill is never chunked")
        if not new_ids:
            raise ValueError("forward needs at least one new token")
        if keep < 1 or keep > len(new_ids):
            raise ValueError(f"keep must be in 1..{len(new_ids)}")
        start = len(self.ids)
        input_ids = torch.tensor([list(new_ids)], dtype=torch.long, device=self.device)
        is_image = input_ids == self.image_token
        kwargs: dict[str, Any] = {}
        if start == 0 and self.images is not None:
            if int(is_image.sum()) != self.images.image_tokens:
                raise ValueError("the prefill must hold every image placeholder of the prompt")
            kwargs.update(self.images.tensors)
        if self.mrope:
            kwargs["position_ids"] = self._positions(input_ids, is_image, start, kwargs)
            if "image_grid_thw" in kwargs:
                kwargs["mm_token_type_ids"] = is_image.int()
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, cache=self.cache, use_cache=True, logits_to_keep=keep, **kwargs
            )
        if start == 0 and self.images is not None:
            self._image_end = int(is_image[0].nonzero().max()) + 1 if self.images.image_tokens else 0
        self.ids.extend(int(t) for t in new_ids)
        return out.logits[0]

    def _positions(
        self, input_ids: torch.Tensor, is_image: torch.Tensor, start: int, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """[3, 1, n] M-RoPE positions: the model's own `get_rope_index` for the prefill, then the cache
        index plus the prompt's delta."""
        n = input_ids.shape[1]
        if start == 0 and "image_grid_thw" in kwargs:
            positions, delta = self.model.model.get_rope_index(
                input_ids, mm_token_type_ids=is_image.int(), image_grid_thw=kwargs["image_grid_thw"]
            )
            self._rope.delta = delta.to(self.device).view(1, 1)
            return positions
        delta = 0 if self._rope.delta is None else self._rope.delta
        text = torch.arange(start, start + n, device=self.device).view(1, 1, n) + delta
        return text.expand(3, 1, n)


def cached_lm_for(model: Any) -> CachedLM:
    """The KV cache a model needs: `VisionCachedLM` for a VLM, `CachedLM` for a text LM."""
    return VisionCachedLM(model) if is_vlm(model) else CachedLM(model)


def image_only_processor(processor_class: type, image_processor: Any, tokenizer: Any) -> Any:
    """A Qwen-style processor without its video processor: transformers' video processors need
    torchvision, which is not installed here (it breaks transformers' CPU build); images never need it."""
    return _image_only_class(processor_class)(image_processor=image_processor, tokenizer=tokenizer)


def _image_only_class(processor_class: type) -> type:
    def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
        if argument is None and argument_name == "video_processor":
            return None
        return processor_class.check_argument_for_proper_class(self, argument_name, argument)

    return type(
        processor_class.__name__,
        (processor_class,),
        {
            "check_argument_for_proper_class": check_argument_for_proper_class,
            "__init__": lambda self, image_processor=None, tokenizer=None, **kw: processor_class.__init__(
                self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kw
            ),
        },
    )


def load_processor(path: Any) -> Any:
    """A saved VLM's processor; without torchvision, a Qwen-style one is rebuilt without its video part."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, AttributeError, ValueError, TypeError, OSError):
        import json
        from pathlib import Path

        import transformers

        config = json.loads((Path(path) / "processor_config.json").read_text())
        processor_class = getattr(transformers, config["processor_class"])
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        return image_only_processor(processor_class, image_processor, AutoTokenizer.from_pretrained(path))
