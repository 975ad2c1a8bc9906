"""The shipped models' card: `weights/card.json` (the figures) and `weights/MODEL_CARD.md` (to read)."""

from __future__ import annotations

from pathlib import Path

INTRO = """# Edge perception models (issue 15)

Shipped: `ann` (small CNN), `snn` (its spiking twin: spikingjelly LIF neurons, ATan surrogate gradient,
direct coding, T = 4, 4 epochs), `snn_pruned` (a lottery ticket, 90.4 % of the weights zero, found by IMP
with rewinding from an earlier 10-epoch run of the same SNN, not from `snn`). Input: the sim head camera
(160×120) downsampled 2× to 80×60 RGB. Output: per colour (8 task-file colours) the nearest visible object's
shape (absent/sphere/box/cylinder), bearing bin (5) and distance bin (3), plus obstacle ahead and free
direction — the oracle's own bins (`robot/perception/labels.py`). Trained on random task-file scenes
rendered by MuJoCo (`eespec perception dataset`, seed 0: 500 scenes × 10 poses, split by scene 80/10/10).

Figures below are recomputed by `tests/test_perception_slow.py` (it renders the test split again).
`accuracy` is the mean over the 5 label heads of each head's accuracy (bearing and distance only where the
object is visible). `macs`/`synops` per frame: exact counts (`robot/perception/ops.py`); for the direct-coded
SNN the first convolution reads the analog frame and its MACs are counted separately (`macs`).
Energy: {energy}. Latency: {latency}; it depends on the machine and its load (it was measured on a
loaded 2-core VM; the slow test does not compare it; benchmarks/RESULTS.md has interleaved figures).

Limits: trained on simulator frames only (flat grey floor, sky gradient, the 3 shapes × 8 colours); a
colour seen twice reports its nearest object only; bearing/distance are bins (a learned model reports the
bin centre as `bearing_rad`/`distance_m`). Not for a real robot without training on its camera.
"""


def write_card(report: dict, directory: Path) -> None:
    import json

    meta = report["_meta"]
    (directory / "card.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = [
        "| model | accuracy | T | MACs / frame | synops / frame | energy (µJ) | latency (ms) | sparsity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in report.items():
        if name == "_meta":
            continue
        rows.append(
            f"| {name} | {e['accuracy']:.4f} | {e['timesteps']} | {e['macs']:,} | {e.get('synops', 0):,} | "
            f"{e['energy_uj']:.3f} | {e['latency_ms']:.2f} | {e['sparsity']:.1%} |"
        )
    text = INTRO.format(energy=meta["energy_per_op"], latency=meta["latency"])
    text += f"\nTest split: {meta['frames']} frames ({meta['source']}).\n\n" + "\n".join(rows) + "\n"
    (directory / "MODEL_CARD.md").write_text(text)
