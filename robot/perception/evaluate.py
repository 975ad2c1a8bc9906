"""One model's figures on a set of frames: accuracy per head, operations, energy, latency on one core."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from robot.perception.models import ANN, SNN, frames_to_tensor
from robot.perception.ops import ann_ops, energy_uj, ops_table, snn_ops
from robot.perception.train import accuracy

OPS_FRAMES = 64  # frames whose operations are averaged (spike counts vary per frame)


def latency_ms(model: ANN | SNN, frame: torch.Tensor, repeats: int = 30, threads: int = 1) -> float:
    """Median wall time of one single-frame forward pass on `threads` torch threads (after a warm-up)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(3):
                model(frame)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(frame)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def evaluate(model: ANN | SNN, frames: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict:
    torch.manual_seed(seed)  # rate coding draws spikes
    model.eval()
    acc = accuracy(model, frames, labels)
    probe = frames_to_tensor(frames[:OPS_FRAMES])
    layers = snn_ops(model, probe) if isinstance(model, SNN) else ann_ops(model, probe)
    out: dict = {
        "kind": model.config.kind,
        "accuracy": round(acc["accuracy"], 4),
        "heads": {k: round(v, 4) for k, v in acc.items() if k != "accuracy"},
        "timesteps": model.config.timesteps if isinstance(model, SNN) else 1,
    }
    if isinstance(model, SNN):
        out["coding"] = model.config.coding
        out["synops"] = round(sum(op.synops for op in layers))
        out["macs"] = round(sum(op.macs for op in layers))  # the direct-coded first layer's, else 0
        out["spikes"] = round(sum(op.spikes for op in layers))
    else:
        out["macs"] = round(sum(op.macs for op in layers))
    weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    out["sparsity"] = round(float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights)), 4)
    out["energy_uj"] = round(energy_uj(layers), 4)
    out["latency_ms"] = round(latency_ms(model, probe[:1]), 3)
    out["layers"] = ops_table(layers)
    out["frames"] = int(len(frames))
    return out
