"""The learned perception models: a small CNN (ANN) and its spiking twin (SNN, spikingjelly LIF neurons).

Both read a frame (B, 3, H, W) in [0, 1] and give logits (B, N_OUTPUTS) in the `labels` layout. The SNN runs
T timesteps in spikingjelly's multi-step mode; its input coding is
* `direct`: the analog frame enters the first convolution (computed once, repeated over T);
* `rate`: each pixel fires a Bernoulli spike per step with its intensity as probability;
* `event`: ON/OFF events of a per-pixel log-intensity change model under a one-pixel micro-saccade (the frame
  shifted along a square path, as event cameras see static scenes), thresholded per colour channel.
The readout is the mean over T of the last linear layer's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from robot.perception.labels import N_OUTPUTS

Coding = Literal["direct", "rate", "event"]
CODINGS: tuple[str, ...] = ("direct", "rate", "event")
EVENT_THRESHOLD = 0.15  # log-intensity change that fires an event (DVS contrast threshold)
SACCADE = ((0, 0), (0, 1), (1, 1), (1, 0))  # (dy, dx) offsets, cycled


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["ann", "snn"] = "ann"
    coding: Coding = "direct"
    timesteps: int = 4
    widths: tuple[int, int, int] = (16, 32, 64)
    height: int = 60
    width: int = 80
    tau: float = 2.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        data = dict(data)
        data["widths"] = tuple(data["widths"])
        return cls(**data)

    @property
    def in_channels(self) -> int:
        return 6 if self.kind == "snn" and self.coding == "event" else 3


def _feature_hw(h: int, w: int) -> tuple[int, int]:
    for _ in range(3):  # three stride-2 convolutions (padding 1, kernel 3)
        h, w = (h + 1) // 2, (w + 1) // 2
    return h // 2, w // 2  # then a 2×2 average pool


class ANN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(config.in_channels, c1, 3, 2, 1, bias=False),
                nn.Conv2d(c1, c2, 3, 2, 1, bias=False),
                nn.Conv2d(c2, c3, 3, 2, 1, bias=False),
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in config.widths])
        self.pool = nn.AvgPool2d(2)
        fh, fw = _feature_hw(config.height, config.width)
        self.fc = nn.Linear(c3 * fh * fw, N_OUTPUTS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = torch.relu(norm(conv(x)))
        return self.fc(self.pool(x).flatten(1))


class SNN(nn.Module):
    """The ANN's layers with LIF neurons (ATan surrogate gradient) in place of ReLU, run for T steps."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        self.convs = nn.ModuleList(
            [
                layer.Conv2d(config.in_channels, c1, 3, 2, 1, bias=False, step_mode="m"),
                layer.Conv2d(c1, c2, 3, 2, 1, bias=False, step_mode="m"),
                layer.Conv2d(c2, c3, 3, 2, 1, bias=False, step_mode="m"),
            ]
        )
        self.norms = nn.ModuleList([layer.BatchNorm2d(c, step_mode="m") for c in config.widths])
        self.lifs = nn.ModuleList(
            [
                neuron.LIFNode(
                    tau=config.tau, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m"
                )
                for _ in config.widths
            ]
        )
        self.pool = layer.AvgPool2d(2, step_mode="m")
        fh, fw = _feature_hw(config.height, config.width)
        self.fc = layer.Linear(c3 * fh * fw, N_OUTPUTS, step_mode="m")
        self.record = False
        self.spikes: list[torch.Tensor] = []  # per LIF layer, (T, B, C, H, W), when `record`
        self.inputs: torch.Tensor | None = None  # the coded input (T, B, C, H, W), when `record`
        self.live_rates: list[torch.Tensor] = []  # mean firing rate per LIF layer of the last forward

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (T, B, C, H, W) input of the first convolution."""
        return encode_input(frames, self.config.coding, self.config.timesteps)

    def step_outputs(self, frames: torch.Tensor) -> torch.Tensor:
        """The readout at every timestep, (T, B, N_OUTPUTS); resets the neurons first."""
        functional.reset_net(self)
        cfg = self.config
        if cfg.coding == "direct":  # the first convolution of a constant input is computed once
            first = nn.functional.conv2d(frames, self.convs[0].weight, None, 2, 1)
            x = first.unsqueeze(0).repeat(cfg.timesteps, 1, 1, 1, 1)
            inputs = frames.unsqueeze(0)
        else:
            inputs = self.encode(frames)
            x = self.convs[0](inputs)
        self.spikes, self.live_rates = [], []
        self.inputs = inputs if self.record else None
        for i in range(3):
            if i > 0:
                x = self.convs[i](x)
            x = self.lifs[i](self.norms[i](x))
            self.live_rates.append(x.mean())  # with its graph: the spike penalty trains through it
            if self.record:
                self.spikes.append(x.detach())
        return self.fc(self.pool(x).flatten(2))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.step_outputs(frames).mean(0)


def encode_input(frames: torch.Tensor, coding: str, timesteps: int) -> torch.Tensor:
    if coding == "direct":
        return frames.unsqueeze(0).repeat(timesteps, 1, 1, 1, 1)
    if coding == "rate":
        return torch.bernoulli(frames.unsqueeze(0).expand(timesteps, *frames.shape).contiguous())
    if coding == "event":
        log_i = torch.log(frames + 0.02)
        steps = []
        prev = log_i
        for t in range(timesteps):
            dy, dx = SACCADE[(t + 1) % len(SACCADE)]
            cur = torch.roll(log_i, shifts=(dy, dx), dims=(-2, -1))
            diff = cur - prev
            steps.append(torch.cat([(diff > EVENT_THRESHOLD), (diff < -EVENT_THRESHOLD)], dim=1).float())
            prev = cur
        return torch.stack(steps)
    raise ValueError(f"unknown coding {coding!r}; one of {', '.join(CODINGS)}")


def build_model(config: ModelConfig) -> ANN | SNN:
    return ANN(config) if config.kind == "ann" else SNN(config)


def frames_to_tensor(frames) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """uint8 (B, H, W, 3) (numpy or torch) → float (B, 3, H, W) in [0, 1]."""
    t = torch.as_tensor(frames)
    return t.permute(0, 3, 1, 2).float().div_(255.0)
