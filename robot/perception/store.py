"""Saving and loading perception models as safetensors (the config in the metadata); the shipped ones."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from safetensors.torch import load_file, safe_open, save_file

from robot.perception.models import ANN, SNN, ModelConfig, build_model

SHIPPED = ("ann", "snn", "snn_pruned")


def save_model(model: ANN | SNN, path: Path, info: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"model_config": json.dumps(model.config.to_dict()), "info": json.dumps(info or {})}
    save_file(state, str(path), metadata=meta)


def load_model(path: Path | str) -> ANN | SNN:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    model = build_model(ModelConfig.from_dict(json.loads(meta["model_config"])))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model


def shipped_dir() -> Path:
    return Path(str(resources.files("robot.perception.weights")))


def shipped_path(name: str) -> Path:
    if name not in SHIPPED:
        raise KeyError(f"no shipped perception model {name!r}; shipped: {', '.join(SHIPPED)}")
    return shipped_dir() / f"{name}.safetensors"


def load_shipped(name: str) -> ANN | SNN:
    path = shipped_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (train it: `eespec perception train`)")
    return load_model(path)


def with_timesteps(model: SNN, timesteps: int) -> SNN:
    """The same weights run for another T."""
    other = build_model(ModelConfig.from_dict(model.config.to_dict() | {"timesteps": timesteps}))
    other.load_state_dict(model.state_dict())
    other.eval()
    return other  # type: ignore[return-value]
