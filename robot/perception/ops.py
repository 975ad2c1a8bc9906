"""Operation counts and the energy estimate: the ANN's MACs, the SNN's spikes and synaptic operations.

Counts are per frame and exact for the weights as they are (pruned weights, = 0, cost nothing):
* ANN: a MAC per (input, non-zero weight) pair of every convolution and of the linear readout.
* SNN: an accumulate (AC, a synaptic operation) per (input spike, non-zero outgoing weight) pair, summed over
  the T steps; the average pool before the readout is folded into it (a spike adds its weight / 4 to each
  output). Under direct coding the first convolution reads the analog frame: MACs, counted once (its input
  is constant over T). BatchNorm folds into the convolutions at inference and costs nothing here.
Energies per operation: Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 32-bit float:
add 0.9 pJ, multiply 3.7 pJ → MAC 4.6 pJ, AC 0.9 pJ (the figures the SNN literature uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robot.perception.models import ANN, SNN

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
ENERGY_SOURCE = "Horowitz, ISSCC 2014, 45 nm, 32-bit float: MAC 4.6 pJ (mult 3.7 + add 0.9), AC 0.9 pJ"


@dataclass
class LayerOps:
    name: str
    macs: float = 0.0  # per frame
    synops: float = 0.0  # per frame (summed over T)
    spikes: float = 0.0  # output spikes per frame (summed over T), SNN only
    neurons: int = 0
    timesteps: int = 1

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron per timestep."""
        return self.spikes / (self.neurons * self.timesteps) if self.neurons else 0.0


def _conv_pairs(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Per sample: Σ over outputs of (non-zero input, non-zero weight) pairs in each receptive field."""
    mask = (conv.weight != 0).float()
    return nn.functional.conv2d((x != 0).float(), mask, None, conv.stride, conv.padding).sum((1, 2, 3))


@torch.no_grad()
def ann_ops(model: ANN, frames: torch.Tensor) -> list[LayerOps]:
    model.eval()
    out = []
    x = frames
    for i, (conv, norm) in enumerate(zip(model.convs, model.norms, strict=True)):
        # every input is a multiplication operand (dense activations: count all inputs, not only non-zero)
        ones = torch.ones_like(x[:1])
        macs = nn.functional.conv2d(ones, (conv.weight != 0).float(), None, conv.stride, conv.padding).sum()
        out.append(LayerOps(f"conv{i + 1}", macs=float(macs)))
        x = torch.relu(norm(conv(x)))
    out.append(LayerOps("fc", macs=float((model.fc.weight != 0).sum())))
    return out


@torch.no_grad()
def snn_ops(model: SNN, frames: torch.Tensor) -> list[LayerOps]:
    """Per-layer operations per frame, averaged over `frames` (one forward pass with spike recording)."""
    model.eval()
    model.record = True
    try:
        model.step_outputs(frames)
        spikes, inputs = model.spikes, model.inputs
    finally:
        model.record = False
    assert inputs is not None
    b = frames.shape[0]
    layers = []
    # conv1: MACs of the analog frame once (direct), else ACs of input spikes/events at every step
    conv1 = model.convs[0]
    if model.config.coding == "direct":
        ones = torch.ones_like(inputs[0, :1])
        macs = nn.functional.conv2d(
            ones, (conv1.weight != 0).float(), None, conv1.stride, conv1.padding
        ).sum()
        first = LayerOps("conv1", macs=float(macs))
    else:
        flat = inputs.flatten(0, 1)
        first = LayerOps("conv1", synops=float(_conv_pairs(flat, conv1).sum()) / b)
    for i, s in enumerate(spikes):
        layer_ops = first if i == 0 else LayerOps(f"conv{i + 1}")
        if i > 0:
            layer_ops.synops = float(_conv_pairs(spikes[i - 1].flatten(0, 1), model.convs[i]).sum()) / b
        layer_ops.spikes = float(s.sum()) / b
        layer_ops.neurons = int(s[0, 0].numel())
        layer_ops.timesteps = int(s.shape[0])
        layers.append(layer_ops)
    # readout: each spike of the last layer reaches the fc through the 2×2 average pool
    last = spikes[-1].flatten(0, 1)  # (T·B, C, H, W)
    pooled_counts = nn.functional.avg_pool2d(last, 2, divisor_override=1).flatten(1)  # spikes per pooled cell
    fan_out = (model.fc.weight != 0).float().sum(0)  # non-zero outgoing weights per pooled cell
    layers.append(LayerOps("fc", synops=float((pooled_counts @ fan_out).sum()) / b))
    return layers


def energy_uj(layers: list[LayerOps]) -> float:
    return sum(op.macs * E_MAC_PJ + op.synops * E_AC_PJ for op in layers) * 1e-6


def ops_table(layers: list[LayerOps]) -> list[dict]:
    return [
        {
            "layer": op.name,
            "macs": round(op.macs),
            "synops": round(op.synops),
            "spikes": round(op.spikes),
            "firing_rate": round(op.firing_rate, 4),
        }
        for op in layers
    ]
