"""The on-disk cache: where models live, the completion marker, atomic publication of a model folder."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = "eespec-model.json"


def eespec_home() -> Path:
    """`$EESPEC_HOME`, else ``~/.cache/eespec``."""
    env = os.environ.get("EESPEC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "eespec"


def models_dir() -> Path:
    return eespec_home() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def is_complete(path: Path) -> bool:
    """A model folder is usable once its marker exists: the marker is written last, before publication."""
    return (path / MARKER).is_file()


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((path / MARKER).read_text())


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder under `$EESPEC_HOME/tmp` (same filesystem as the cache), removed afterwards."""
    root = eespec_home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_model_dir(dest: Path, marker: dict[str, Any], *, replace: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside `dest`; on success write the marker and rename it to `dest`.

    With `replace` an existing `dest` is swapped out; otherwise a complete `dest` that appeared meanwhile
    (another process pulling the same model) wins and the staged copy is dropped.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published folder should not be
    try:
        yield stage
        record = {**marker, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        (stage / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        _publish(stage, dest, replace=replace)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(stage: Path, dest: Path, *, replace: bool) -> None:
    if dest.exists():
        if is_complete(dest) and not replace:
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        dest.rename(trash / dest.name)
        try:
            stage.rename(dest)
        except BaseException:
            (trash / dest.name).rename(dest)
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        stage.rename(dest)
    except OSError:
        # Lost a race against another process publishing the same model.
        if not (is_complete(dest) and not replace):
            raise
