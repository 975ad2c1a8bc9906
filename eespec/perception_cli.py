"""`eespec perception dataset | train | eval | prune`: the edge perception (DESIGN.md, "Perception")."""

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


def _threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


@perception_app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where the trained weights go (.safetensors).")],
    data: Annotated[Path, typer.Option(help="Dataset from `eespec perception dataset`.")] = DEFAULT_DATA,
    model: Annotated[str, typer.Option(help="ann | snn")] = "snn",
    coding: Annotated[str, typer.Option(help="SNN input coding: direct | rate | event")] = "direct",
    timesteps: Annotated[int, typer.Option(min=1, max=32, help="SNN timesteps T.")] = 4,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option()] = 2e-3,
    spike_penalty: Annotated[float, typer.Option(help="× mean firing rate added to the SNN loss.")] = 0.0,
    fisher_probe: Annotated[int, typer.Option(help="Frames probed for Fisher information per step.")] = 0,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint (default OUT.ckpt).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint when it exists.")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
) -> None:
    """Train an ANN or SNN (resumable: a checkpoint per epoch); writes weights and the training history."""
    import json

    from robot.perception.dataset import Dataset
    from robot.perception.models import CODINGS, ModelConfig
    from robot.perception.store import save_model
    from robot.perception.train import TrainConfig
    from robot.perception.train import train as run_training

    if model not in ("ann", "snn"):
        raise typer.BadParameter("--model is ann or snn")
    if coding not in CODINGS:
        raise typer.BadParameter(f"--coding is one of {', '.join(CODINGS)}")
    _threads(threads)
    ds = Dataset.load(data)
    h, w = ds.frames.shape[1:3]
    cfg = ModelConfig(
        kind=model,
        coding=coding if model == "snn" else "direct",  # type: ignore[arg-type]
        timesteps=timesteps if model == "snn" else 1,
        height=h,
        width=w,
    )
    tcfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        spike_penalty=spike_penalty,
        seed=seed,
        fisher_probe=fisher_probe,
    )
    ckpt = checkpoint or out.with_suffix(".ckpt")
    net, history = run_training(cfg, tcfg, ds.part("train"), ds.part("val"), ckpt, resume=resume)
    save_model(net, out, {"data": str(data), "epochs": epochs, "history": history.epochs})
    out.with_suffix(".history.json").write_text(json.dumps(history.epochs, indent=1))
    typer.echo(f"{out}: val accuracy {history.epochs[-1]['val']['accuracy']:.4f}")


def _eval_frames(data: Path, scenes: Path | None, split: str):  # type: ignore[no-untyped-def]
    from robot.perception.dataset import Dataset, task_files_dataset

    if scenes is not None:
        ds = task_files_dataset(scenes)
        return (*ds.part("test"), ds.meta)
    if not data.exists():
        raise typer.BadParameter(f"no dataset {data} (make one: `eespec perception dataset`)")
    ds = Dataset.load(data)
    return (*ds.part(split), ds.meta)


@perception_app.command("eval")
def evaluate_models(
    data: Annotated[Path, typer.Option(help="Dataset from `eespec perception dataset`.")] = DEFAULT_DATA,
    scenes: Annotated[
        Path | None, typer.Option(help="Evaluate on frames rendered from the task files (*.json) in DIR.")
    ] = None,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    weights: Annotated[
        list[Path] | None,
        typer.Option(help="Weights to evaluate (default: the shipped ann, snn, snn_pruned)."),
    ] = None,
    timesteps: Annotated[
        str | None, typer.Option(help="Also evaluate each SNN at these T (comma list): accuracy vs T.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, an entry per model.")] = False,
    layers: Annotated[bool, typer.Option(help="Keep the per-layer operation table (with --json).")] = False,
    card: Annotated[
        bool, typer.Option(help="Write the figures to the shipped model card (weights/card.json).")
    ] = False,
) -> None:
    """Accuracy (mean over label heads), timesteps, MACs or synops, energy and latency on one core."""
    import json
    import platform

    from robot.perception.evaluate import evaluate
    from robot.perception.models import SNN
    from robot.perception.ops import ENERGY_SOURCE
    from robot.perception.store import SHIPPED, load_model, load_shipped, with_timesteps

    frames, labels, data_meta = _eval_frames(data, scenes, split)
    models = {p.stem: load_model(p) for p in weights} if weights else {n: load_shipped(n) for n in SHIPPED}
    report: dict = {}
    for name, model in models.items():
        entry = evaluate(model, frames, labels)
        if isinstance(model, SNN) and timesteps:
            entry["by_timesteps"] = {
                t: {
                    k: v
                    for k, v in evaluate(with_timesteps(model, int(t)), frames, labels).items()
                    if k in ("accuracy", "synops", "energy_uj", "latency_ms")
                }
                for t in timesteps.split(",")
            }
        if not layers:
            entry.pop("layers")
        report[name] = entry
    report["_meta"] = {
        "frames": int(len(frames)),
        "source": str(scenes or f"{data}:{split}"),
        "energy_per_op": ENERGY_SOURCE,
        "latency": f"median single-frame forward, 1 torch thread ({platform.machine()})",
    } | {
        k: data_meta[k]
        for k in ("seed", "scenes", "frames_per_scene", "factor", "task_files")
        if k in data_meta
    }
    if card:
        from robot.perception.card import write_card
        from robot.perception.store import shipped_dir

        write_card(report, shipped_dir())
    if as_json:
        typer.echo(json.dumps(report))
        return
    for name, e in report.items():
        if name == "_meta":
            continue
        ops = f"synops {e['synops']:,}" if "synops" in e else f"MACs {e['macs']:,}"
        typer.echo(
            f"{name:12s} acc {e['accuracy']:.4f}  T={e['timesteps']}  {ops}  "
            f"{e['energy_uj']:.2f} µJ  {e['latency_ms']:.2f} ms  sparsity {e['sparsity']:.2%}"
        )
    typer.echo(f"{report['_meta']['frames']} frames from {report['_meta']['source']}")


@perception_app.command()
def prune(
    dense: Annotated[Path, typer.Option(help="The trained dense SNN (.safetensors).")],
    rewind: Annotated[
        Path, typer.Option(help="The dense SNN's training checkpoint: tickets rewind to its epoch-1 weights.")
    ],
    out_dir: Annotated[Path, typer.Option(help="Tickets, pruned models and prune_report.json go here.")],
    data: Annotated[Path, typer.Option(help="Dataset from `eespec perception dataset`.")] = DEFAULT_DATA,
    methods: Annotated[str, typer.Option(help="Comma list of imp, et, channels.")] = "imp,et,channels",
    rounds: Annotated[int, typer.Option(min=1, help="IMP rounds.")] = 3,
    rate: Annotated[float, typer.Option(min=0.01, max=0.99, help="Weights removed per round.")] = 0.55,
    epochs_per_round: Annotated[int, typer.Option(min=1)] = 3,
    search_timesteps: Annotated[int, typer.Option(min=1, help="Early-Time ticket: T of the search.")] = 1,
    channel_ratio: Annotated[float, typer.Option(min=0.05, max=0.95, help="Channels removed.")] = 0.5,
    channel_epochs: Annotated[int, typer.Option(min=0, help="Fine-tuning after channel pruning.")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
) -> None:
    """Lottery tickets (IMP with rewinding, Early-Time ticket) and Torch-Pruning channel pruning."""
    import json
    import time

    import torch

    from robot.perception.dataset import Dataset
    from robot.perception.evaluate import evaluate
    from robot.perception.prune import channel_prune, imp_with_rewinding, sparsity, train_ticket
    from robot.perception.store import load_model, save_model
    from robot.perception.train import TrainConfig, train

    _threads(threads)
    ds = Dataset.load(data)
    train_val = (ds.part("train"), ds.part("val"))
    test = ds.part("test")
    model = load_model(dense)
    ck = torch.load(rewind, weights_only=False)
    # a training checkpoint keeps the weights after epoch 1 (`rewind_state`); an older one is its own state
    rewind_state = ck.get("rewind_state") or ck["state_dict"]
    tcfg = TrainConfig(epochs=epochs_per_round)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "prune_report.json"
    report: dict = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["dense"] = {k: v for k, v in evaluate(model, *test).items() if k != "layers"}
    wanted = set(methods.split(","))

    def record(name: str, net, extra: dict) -> None:  # type: ignore[no-untyped-def]
        save_model(net, out_dir / f"{name}.safetensors", extra)
        entry = {k: v for k, v in evaluate(net, *test).items() if k != "layers"}
        report[name] = entry | extra
        report_path.write_text(json.dumps(report, indent=1))
        typer.echo(
            f"{name}: test accuracy {entry['accuracy']:.4f}, sparsity {entry['sparsity']:.2%}, "
            f"{entry['latency_ms']:.2f} ms"
        )

    if "imp" in wanted:
        search = imp_with_rewinding(
            model,
            rewind_state,
            train_val,
            rounds=rounds,
            rate=rate,
            train_cfg=tcfg,
            timesteps=model.config.timesteps,
            workdir=out_dir / "imp",
        )
        record(
            "imp_ticket",
            search.model,
            {
                "rounds": search.rounds,
                "search_s": round(search.search_s, 1),
                "mask_sparsity": round(sparsity(search.masks), 4),
            },
        )
    if "et" in wanted:
        search = imp_with_rewinding(
            model,
            rewind_state,
            train_val,
            rounds=rounds,
            rate=rate,
            train_cfg=tcfg,
            timesteps=search_timesteps,
            workdir=out_dir / "et",
        )
        ticket, final_s = train_ticket(
            search.masks, rewind_state, model.config, train_val, tcfg, out_dir / "et" / "final.ckpt"
        )
        record(
            "et_ticket",
            ticket,
            {
                "rounds": search.rounds,
                "search_timesteps": search_timesteps,
                "search_s": round(search.search_s, 1),
                "final_train_s": round(final_s, 1),
                "mask_sparsity": round(sparsity(search.masks), 4),
            },
        )
    if "channels" in wanted:
        t0 = time.perf_counter()
        small = channel_prune(model, channel_ratio)
        if channel_epochs:
            small, _ = train(
                small.config,
                TrainConfig(epochs=channel_epochs),
                *train_val,
                out_dir / "channels.ckpt",
                init_state=small.state_dict(),
            )
        record(
            "channels",
            small,
            {
                "channel_ratio": channel_ratio,
                "widths": list(small.config.widths),
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
