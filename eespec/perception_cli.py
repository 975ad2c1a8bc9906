"""`eespec perception dataset | train | eval | prune`: the edge perception models (DESIGN.md, "Perception")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

perception_app = typer.Typer(
    help="Edge perception: dataset, ANN/SNN training, evaluation, pruning.", no_args_is_help=True
)
DEFAULT_DATA = Path("perception-data/dataset.npz")


@perception_app.command()
def dataset(
    out: Annotated[Path, typer.Option(help="Output .npz.")] = DEFAULT_DATA,
    seed: Annotated[int, typer.Option(help="Scene seed (same seed, same dataset).")] = 0,
    scenes: Annotated[int, typer.Option(min=1, help="Random task-file scenes.")] = 500,
    frames_per_scene: Annotated[int, typer.Option(min=1, help="Robot poses rendered per scene.")] = 10,
    factor: Annotated[int, typer.Option(min=1, max=8, help="Downsampling of the 160×120 camera.")] = 2,
) -> None:
    """Render head-camera frames of random scenes with oracle labels, split train/val/test by scene."""
    from robot.perception.dataset import build_dataset

    data = build_dataset(seed=seed, scenes=scenes, frames_per_scene=frames_per_scene, factor=factor)
    data.save(out)
    typer.echo(
        f"{out}: {len(data.frames)} frames {tuple(data.frames.shape[1:])}, {data.meta['split_frames']}"
    )
