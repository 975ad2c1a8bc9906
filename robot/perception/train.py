"""Training and evaluation of the perception models: resumable (a checkpoint per epoch), with progress
bars, the accuracy per label head, and the Fisher information per timestep of SNNs during training.

Fisher information per timestep (Kim et al., "Exploring temporal information dynamics in spiking neural
networks", AAAI 2023): the trace of the empirical Fisher of the readout accumulated up to step t,
E ||∇θ log p(y | x; mean of the outputs of steps 1..t)||², estimated on a fixed probe of training frames.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from robot.perception.labels import HEADS, head_correct, loss
from robot.perception.models import SNN, ModelConfig, build_model, frames_to_tensor

MaskFn = Callable[[torch.nn.Module], None]


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    spike_penalty: float = 0.0  # × mean firing rate added to the loss (fewer spikes → fewer synops)
    seed: int = 0
    fisher_probe: int = 0  # training frames whose per-timestep Fisher information is recorded each epoch


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)


def accuracy(
    model: torch.nn.Module, frames: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> dict[str, float]:
    """Accuracy per label head and their mean (`accuracy`, 0–1)."""
    model.eval()
    sums = {h: [0, 0] for h in HEADS}
    with torch.no_grad():
        for i in range(0, len(frames), batch_size):
            logits = model(frames_to_tensor(frames[i : i + batch_size]))
            for h, (c, n) in head_correct(logits, torch.as_tensor(labels[i : i + batch_size])).items():
                sums[h][0] += c
                sums[h][1] += n
    out = {h: (c / n if n else 1.0) for h, (c, n) in sums.items()}
    out["accuracy"] = float(np.mean([out[h] for h in HEADS]))
    return out


def fisher_per_timestep(model: SNN, frames: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Trace of the empirical Fisher of the readout accumulated up to each step (per-sample gradients)."""
    model.train(False)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = model.config.timesteps
    fisher = [0.0] * steps
    for i in range(len(frames)):
        for t in range(steps):
            outs = model.step_outputs(frames[i : i + 1])
            nll = loss(outs[: t + 1].mean(0), labels[i : i + 1])
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            fisher[t] += sum(float((g**2).sum()) for g in grads if g is not None)
    return [f / len(frames) for f in fisher]


def _save(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    history: History,
    train_cfg: TrainConfig,
    masks: dict | None,
    rewind_state: dict | None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model_config": model.config.to_dict(),
            "train_config": train_cfg.__dict__,
            "epoch": epoch,
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "history": history.epochs,
            "masks": masks,
            "rewind_state": rewind_state,
        },
        tmp,
    )
    tmp.replace(path)


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    checkpoint: Path,
    *,
    resume: bool = True,
    init_state: dict | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    progress: bool = True,
    rewind_epoch: int = 1,
) -> tuple[torch.nn.Module, History]:
    """Train (or continue from `checkpoint` when `resume` and it exists); `masks` keep pruned weights at 0.

    The weights after `rewind_epoch` epochs stay in the checkpoint (`rewind_state`): lottery tickets rewind
    to them."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    history, start, rewind_state = History(), 0, None
    if resume and checkpoint.exists():
        ck = torch.load(checkpoint, weights_only=False)
        if ck["model_config"] != model_cfg.to_dict():
            raise ValueError(f"{checkpoint} holds a different model ({ck['model_config']}); use a new path")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        history.epochs, start, rewind_state = ck["history"], ck["epoch"], ck.get("rewind_state")
        masks = ck["masks"] if masks is None else masks
    apply_masks(model, masks)
    frames, labels = train_data
    rng = np.random.default_rng(train_cfg.seed + start)
    probe = min(train_cfg.fisher_probe, len(frames))
    probe_x, probe_y = frames_to_tensor(frames[:probe]), torch.as_tensor(labels[:probe])
    for epoch in range(start, train_cfg.epochs):
        for group in opt.param_groups:  # cosine decay by epoch: resuming is exact
            group["lr"] = train_cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / train_cfg.epochs))
        model.train()
        order = rng.permutation(len(frames))
        t0, total, batches = time.perf_counter(), 0.0, 0
        bar = tqdm(
            range(0, len(order), train_cfg.batch_size),
            desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for i in bar:
            idx = order[i : i + train_cfg.batch_size]
            x, y = frames_to_tensor(frames[idx]), torch.as_tensor(labels[idx])
            if isinstance(model, SNN) and train_cfg.spike_penalty > 0:
                out = model(x)
                rate = torch.stack(model.live_rates).mean()
                batch_loss = loss(out, y) + train_cfg.spike_penalty * rate
            else:
                batch_loss = loss(model(x), y)
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            apply_masks(model, masks)
            total += float(batch_loss.detach())
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.3f}")
        record = {"epoch": epoch + 1, "loss": total / max(batches, 1), "seconds": time.perf_counter() - t0}
        record["val"] = accuracy(model, *val_data)
        if probe and isinstance(model, SNN):
            record["fisher"] = fisher_per_timestep(model, probe_x, probe_y)
        history.epochs.append(record)
        if progress:
            tqdm.write(json.dumps({k: v for k, v in record.items() if k != "fisher"}, default=float)[:200])
        if epoch + 1 == rewind_epoch:
            rewind_state = {k: v.clone() for k, v in model.state_dict().items()}
        _save(checkpoint, model, opt, epoch + 1, history, train_cfg, masks, rewind_state)
    model.rewind_state = rewind_state  # type: ignore[assignment]
    return model, history


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    if not masks:
        return
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])


def load_checkpoint(path: Path) -> torch.nn.Module:
    ck = torch.load(path, weights_only=False)
    model = build_model(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model
