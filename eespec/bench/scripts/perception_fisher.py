"""Fisher information per timestep during SNN training (direct vs rate coding), plotted.

Reads the training histories that `eespec perception train --fisher-probe N` writes (OUT.history.json) and
plots, per coding, the trace of the empirical Fisher of the readout accumulated up to each timestep, per
epoch (normalised per epoch so the curves compare across epochs), and prints where it concentrates.

    python -m eespec.bench.scripts.perception_fisher RUN.history.json[=LABEL] ... --out PNG
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("histories", nargs="+", help="history.json files, optionally =LABEL")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/perception_fisher.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for spec in args.histories:
        path, _, label = spec.partition("=")
        history = json.loads(Path(path).read_text())
        fisher = [e["fisher"] for e in history if "fisher" in e]
        if not fisher:
            raise SystemExit(f"{path} has no Fisher information (train with --fisher-probe N)")
        runs.append((label or Path(path).stem, fisher))
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.4), squeeze=False)
    for ax, (label, fisher) in zip(axes[0], runs, strict=True):
        cmap = plt.get_cmap("viridis")
        for i, f in enumerate(fisher):
            total = sum(f) or 1.0
            ax.plot(
                range(1, len(f) + 1),
                [v / total for v in f],
                marker="o",
                color=cmap(i / max(1, len(fisher) - 1)),
                label=f"epoch {i + 1}" if i in (0, len(fisher) - 1) else None,
            )
        ax.set_title(label)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("Fisher trace share (per epoch)")
        ax.set_xticks(range(1, len(fisher[0]) + 1))
        ax.legend(fontsize=8)
        first = [f[0] / (sum(f) or 1.0) for f in fisher]
        peak = [max(range(len(f)), key=lambda t: f[t]) + 1 for f in fisher]
        print(
            f"{label}: share of t=1 per epoch {[round(v, 3) for v in first]}; peak timestep per epoch {peak}"
        )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
