"""Tiny random vision-language models of the real HF families, built in code (no download), seeded.

Each family is the real transformers class with its own processor over the character tokenizer of
`shared.tiny` plus the family's image tokens, at small image sizes; float64 like the tiny text models.
Used by the fast tests and to start real server processes on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from shared.tiny import tiny_tokenizer

FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "llava_efficientnet")
IMAGE_SIZE = 16
_SPECIALS = ["<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
EOS_ID = 2


def tiny_vlm_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIALS})
    return tokenizer


def _text(vocab: int, layers: int, hidden: int, init_std: float) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        initializer_range=init_std,
        tie_word_embeddings=False,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=0,
    )


def tiny_vlm(
    family: str,
    seed: int = 0,
    *,
    layers: int = 3,
    hidden: int = 32,
    init_std: float = 0.5,
    dtype=torch.float64,
):
    """(model, processor) of a tiny random VLM of `family` (one of FAMILIES)."""
    tokenizer = tiny_vlm_tokenizer()
    vocab = len(tokenizer)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in _SPECIALS}
    if family == "llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

        config = LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=IMAGE_SIZE,
                patch_size=8,
            ),
            text_config=LlamaConfig(**_text(vocab, layers, hidden, init_std)),
            image_token_id=ids["<image>"],
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
        )
        model_class = LlavaForConditionalGeneration
        processor = _llava_processor(LlavaImageProcessorPil, tokenizer)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        config, model_class, processor = _qwen(family, tokenizer, vocab, layers, hidden, init_std, ids)
    elif family == "idefics3":
        config, model_class, processor = _idefics3(tokenizer, layers, hidden, init_std)
    elif family == "llava_efficientnet":  # the default VLM's design: the pretrained tower, a tiny LM
        from transformers import LlamaConfig

        from shared.vision_towers import efficientnet_llava

        torch.manual_seed(seed)
        model, processor = efficientnet_llava(
            LlamaConfig(**_text(vocab, layers, hidden, init_std)), tokenizer, image_size=64
        )
        model.generation_config = GenerationConfig(bos_token_id=1, pad_token_id=0)
        return model.to(dtype), processor
    else:
        raise ValueError(f"unknown VLM family {family!r}; known: {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    model = model_class(config).to(dtype).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, pad_token_id=0)
    return model, processor


def _llava_processor(image_processor_class, tokenizer):
    from transformers import LlavaProcessor

    image_processor = image_processor_class(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    # CLIP's CLS token is the one extra vision token the "default" strategy drops.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def _qwen(family, tokenizer, vocab, layers, hidden, init_std, ids):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from shared.vlm import image_only_processor

    text = _text(vocab, layers, hidden, init_std)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    vision = dict(
        depth=1,
        num_heads=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        vision.update(embed_dim=16, hidden_size=hidden, mlp_ratio=2)
        config_class, model_class, processor_class = (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLProcessor,
        )
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        vision.update(hidden_size=16, out_hidden_size=hidden, intermediate_size=32, window_size=16)
        vision["fullatt_block_indexes"] = [0]
        config_class, model_class, processor_class = (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
        )
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # 16x16 → 4x4 patches of 4 → 2x2 merged tokens; 24x20 frames resize to 24x24 → 9 tokens.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 8 * 8, "longest_edge": 32 * 32},
        patch_size=4,
        merge_size=2,
        temporal_patch_size=2,
    )
    return config, model_class, image_only_processor(processor_class, image_processor, tokenizer)


def _idefics3(tokenizer, layers, hidden, init_std):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    # One 16x16 image, no splitting: 4x4 patches of 4, pixel-shuffled by 2 → 4 image tokens.
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
    vocab = len(tokenizer)  # the processor added its own special tokens
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=4,
        ),
        text_config=LlamaConfig(**_text(vocab, layers, hidden, init_std)),
        scale_factor=2,
        image_token_id=processor.image_token_id,
    )
    return config, Idefics3ForConditionalGeneration, processor


def save_tiny_vlm_pair(directory: str | Path, family: str) -> tuple[str, str]:
    """A tiny target (3 layers) and draft (1 layer) VLM of `family` saved as HF folders with the
    processor; EOS is `</s>` (2). Returns their paths."""
    directory = Path(directory)
    paths = []
    for name, seed, layers in (("target", 0, 3), ("draft", 1, 1)):
        model, processor = tiny_vlm(family, seed, layers=layers)
        model.generation_config.eos_token_id = EOS_ID
        path = directory / f"{family}-{name}"
        model.save_pretrained(path)
        processor.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]
