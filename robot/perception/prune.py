"""Pruning the SNN: lottery tickets by iterative magnitude pruning with rewinding, the Early-Time ticket,
and structural channel pruning with Torch-Pruning (traced in single-step mode) for latency on one core.

* IMP with rewinding (Frankle et al. 2020; for SNNs Kim et al., "Exploring lottery ticket hypothesis in
  spiking neural networks", ECCV 2022): each round removes `rate` of the remaining weights of smallest
  magnitude (globally over every convolution and the readout), rewinds the survivors to their values after
  the first training epoch, and retrains with the mask.
* Early-Time ticket (same paper): the rounds run at a small T (the mask is searched cheaply), then the
  ticket is trained at the full T. Search time is wall time, both measured in the same run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robot.perception.models import SNN, ModelConfig, build_model
from robot.perception.train import TrainConfig, accuracy, train


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights lottery tickets prune: every convolution's and the readout's (not BatchNorm's)."""
    return {n: p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}


def magnitude_masks(
    model: nn.Module, rate: float, masks: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: drop `rate` of the weights still alive (ties kept), across all layers."""
    weights = prunable(model)
    masks = masks or {n: torch.ones_like(p) for n, p in weights.items()}
    alive = torch.cat([p.detach().abs()[masks[n] > 0] for n, p in weights.items()])
    k = int(rate * alive.numel())
    if k == 0:
        return {n: m.clone() for n, m in masks.items()}
    threshold = torch.kthvalue(alive, k).values
    return {n: ((p.detach().abs() > threshold) & (masks[n] > 0)).float() for n, p in weights.items()}


def sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - float(sum(m.sum() for m in masks.values())) / total


@dataclass
class TicketSearch:
    masks: dict[str, torch.Tensor]
    model: SNN
    rounds: list[dict] = field(default_factory=list)
    search_s: float = 0.0


def imp_with_rewinding(
    dense: SNN,
    rewind_state: dict[str, torch.Tensor],
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    rounds: int,
    rate: float,
    train_cfg: TrainConfig,
    timesteps: int,
    workdir: Path,
    progress: bool = True,
) -> TicketSearch:
    """`rounds` of prune → rewind → retrain at `timesteps` (checkpointed per round: resumable)."""
    cfg = replace(dense.config, timesteps=timesteps)
    current: nn.Module = dense
    masks = None
    records = []
    t0 = time.perf_counter()
    for r in range(rounds):
        masks = magnitude_masks(current, rate, masks)
        start = {k: v.clone() for k, v in rewind_state.items()}
        for name, m in masks.items():
            start[name] = start[name] * m
        current, hist = train(
            cfg,
            train_cfg,
            *data,
            workdir / f"round{r + 1}.ckpt",
            init_state=start,
            masks=masks,
            progress=progress,
        )
        records.append(
            {
                "round": r + 1,
                "sparsity": round(sparsity(masks), 4),
                "val_accuracy": round(hist.epochs[-1]["val"]["accuracy"], 4),
                "seconds": round(sum(e["seconds"] for e in hist.epochs), 1),
            }
        )
    assert masks is not None
    return TicketSearch(masks, current, records, time.perf_counter() - t0)  # type: ignore[arg-type]


def train_ticket(
    masks: dict[str, torch.Tensor],
    rewind_state: dict[str, torch.Tensor],
    config: ModelConfig,
    data: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    train_cfg: TrainConfig,
    checkpoint: Path,
    progress: bool = True,
) -> tuple[SNN, float]:
    """A ticket (mask + rewind weights) trained at `config`'s T; returns the model and the wall time."""
    start = {k: v.clone() for k, v in rewind_state.items()}
    for name, m in masks.items():
        start[name] = start[name] * m
    t0 = time.perf_counter()
    model, _ = train(config, train_cfg, *data, checkpoint, init_state=start, masks=masks, progress=progress)
    return model, time.perf_counter() - t0  # type: ignore[return-value]


# --- structural channel pruning (Torch-Pruning) -------------------------------------------------------------


class _SingleStep(nn.Module):
    """The SNN's own modules in a single-step chain, for Torch-Pruning's dependency graph to trace."""

    def __init__(self, snn: SNN) -> None:
        super().__init__()
        self.snn = snn

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        s = self.snn
        x = frames
        for conv, norm, lif in zip(s.convs, s.norms, s.lifs, strict=True):
            x = lif(norm(conv(x)))
        return s.fc(s.pool(x).flatten(1))


def channel_prune(model: SNN, ratio: float) -> SNN:
    """Remove `ratio` of every hidden layer's channels (L1 norm of the filters); a smaller, dense SNN."""
    import torch_pruning as tp
    from spikingjelly.activation_based import functional

    net = build_model(model.config)
    net.load_state_dict(model.state_dict())
    functional.set_step_mode(net, "s")
    functional.reset_net(net)
    wrapper = _SingleStep(net)  # type: ignore[arg-type]
    example = torch.rand(1, 3, model.config.height, model.config.width)
    pruner = tp.pruner.MetaPruner(
        wrapper,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[net.fc],
    )
    pruner.step()
    functional.reset_net(net)
    functional.set_step_mode(net, "m")
    widths = tuple(int(c.out_channels) for c in net.convs)
    small = build_model(replace(model.config, widths=widths))  # type: ignore[arg-type]
    small.load_state_dict(net.state_dict())
    return small  # type: ignore[return-value]


def evaluate_accuracy(model: nn.Module, frames: np.ndarray, labels: np.ndarray) -> float:
    return accuracy(model, frames, labels)["accuracy"]
