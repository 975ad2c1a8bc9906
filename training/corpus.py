"""Offline training text: the running interpreter's standard library sources (plus Debian English text when
one is on disk), tokenised into fixed-length blocks, split train / held-out by a seeded hash of the source
file, with every block that overlaps a benchmark workload prompt removed. Cached as npz under
``$EESPEC_HOME/corpora`` so a rerun starts at once.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.hashing import vocab_hash
from shared.models import eespec_home
from shared.workloads import exclusion_strings

# Public-domain / documentation English that Debian packages install; used only when already on disk.
ENGLISH_GLOBS = (
    "/usr/share/bible-kjv*/**/*",
    "/usr/share/doc/bible-kjv*/**/*",
    "/usr/share/doc/python3*-doc/html/_sources/**/*.txt",
)
CORPUS_VERSION = 1


@dataclass(frozen=True)
class TextFile:
    """One source document: `name` is stable across machines (it decides the split), `path` is where it is."""

    name: str
    path: Path

    def read(self) -> str:
        raw = self.path.read_bytes()
        if self.path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8", errors="replace")


@dataclass
class Corpus:
    """Token blocks [n, seq_len] of each split, and how they were made."""

    train: np.ndarray
    heldout: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.train.shape[1])


def stdlib_files() -> list[TextFile]:
    """Every *.py file of the running interpreter's standard library (site-packages excluded), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages") or "__pycache__" in rel.parts:
            continue
        files.append(TextFile(f"stdlib/{rel.as_posix()}", path))
    return sorted(files, key=lambda f: f.name)


def english_files(patterns: Sequence[str] = ENGLISH_GLOBS) -> list[TextFile]:
    """Debian English text already installed (KJV Bible, Python docs); empty when there is none."""
    found: dict[str, TextFile] = {}
    for pattern in patterns:
        for hit in glob.glob(pattern, recursive=True):
            path = Path(hit)
            if path.is_file() and path.suffix in ("", ".txt", ".gz") and path.stat().st_size > 1000:
                found[f"english{path.as_posix()}"] = TextFile(f"english{path.as_posix()}", path)
    return [found[k] for k in sorted(found)]


def default_files() -> list[TextFile]:
    return stdlib_files() + english_files()


def workload_prompts() -> list[str]:
    """The `prompts` (and `system`) strings of every benchmark workload: text no training set may contain
    (an install without the workloads is an error, never a silent empty list)."""
    return exclusion_strings()


def prompt_pattern(prompts: Iterable[str]) -> re.Pattern[str] | None:
    """One regex matching any prompt, whitespace runs matching any whitespace (so re-indented or re-wrapped
    copies are caught too)."""
    parts = []
    for prompt in prompts:
        words = prompt.split()
        if words:
            parts.append(r"\s+".join(re.escape(w) for w in words))
    return re.compile("|".join(sorted(set(parts)))) if parts else None


def contains_prompt(text: str, pattern: re.Pattern[str] | None) -> bool:
    return pattern is not None and pattern.search(text) is not None


def split_of(name: str, seed: int, heldout_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction else "train"


def assign_splits(files: Sequence[TextFile], seed: int, heldout_fraction: float) -> dict[str, str]:
    """Seeded hash split by file; at least one file on each side when there are two or more."""
    splits = {f.name: split_of(f.name, seed, heldout_fraction) for f in files}
    if len(files) >= 2:
        for side, other in (("heldout", "train"), ("train", "heldout")):
            if side not in splits.values():
                ranked = sorted(files, key=lambda f: hashlib.sha256(f"{seed}:{f.name}".encode()).digest())
                splits[(ranked[0] if side == "heldout" else ranked[-1]).name] = side
                assert other in splits.values()
    return splits


def separator_id(tokenizer: Any) -> int:
    """Document separator between files: `<|endoftext|>` when the vocabulary has it, else EOS."""
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return int(tokenizer.eos_token_id)


def _tokenise_file(
    tokenizer: Any, text: str, pattern: re.Pattern[str] | None
) -> tuple[list[int], list[bool], int]:
    """Ids, a per-token "overlaps a workload prompt" flag, and the number of prompt occurrences."""
    spans = [m.span() for m in pattern.finditer(text)] if pattern is not None else []
    if not spans:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids), [False] * len(ids), 0
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    flags = [any(s < end and start < e for s, e in spans) for start, end in enc["offset_mapping"]]
    return list(enc["input_ids"]), flags, len(spans)


def _fingerprint(files: Sequence[TextFile]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.path.stat()
        h.update(f"{f.name}\0{st.st_size}\n".encode())
    return h.hexdigest()[:16]


def cache_path(key: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or eespec_home() / "corpora") / f"exits-{key}.npz"


def build_corpus(
    tokenizer: Any,
    *,
    files: Sequence[TextFile] | None = None,
    seq_len: int = 128,
    seed: int = 0,
    heldout_fraction: float = 0.03,
    prompts: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Corpus:
    """Tokenise `files` (default: stdlib + any Debian English) into [n, seq_len] blocks per split.

    Files are concatenated per split in name order with a separator token, then cut into blocks; a block
    with any token inside a workload prompt occurrence, or whose decoded text contains a prompt, is dropped.
    """
    files = sorted(default_files() if files is None else files, key=lambda f: f.name)
    prompts = workload_prompts() if prompts is None else list(prompts)
    key_src = json.dumps(
        {
            "v": CORPUS_VERSION,
            "vocab": vocab_hash(tokenizer),
            "files": _fingerprint(files),
            "seq_len": seq_len,
            "seed": seed,
            "heldout_fraction": heldout_fraction,
            "prompts": sorted(prompts),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_path(key, cache_dir)
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            return Corpus(data["train"], data["heldout"], json.loads(str(data["info"])))

    pattern = prompt_pattern(prompts)
    splits = assign_splits(files, seed, heldout_fraction)
    sep = separator_id(tokenizer)
    streams: dict[str, tuple[list[int], list[bool]]] = {"train": ([], []), "heldout": ([], [])}
    per_source: dict[str, dict[str, int]] = {}
    occurrences = 0
    iterator: Iterable[TextFile] = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="tokenising", unit="file", file=sys.stderr, mininterval=5)
    for f in iterator:
        text = f.read()
        if not text.strip():
            continue
        ids, flags, hits = _tokenise_file(tokenizer, text, pattern)
        occurrences += hits
        ids_out, flags_out = streams[splits[f.name]]
        ids_out.extend(ids)
        ids_out.append(sep)
        flags_out.extend(flags)
        flags_out.append(False)
        src = f.name.split("/", 1)[0]
        stats = per_source.setdefault(src, {"files": 0, "tokens": 0, "bytes": 0})
        stats["files"] += 1
        stats["tokens"] += len(ids)
        stats["bytes"] += len(text.encode())

    dtype = np.uint16 if len(tokenizer) <= 2**16 else np.int32
    blocks: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for split, (ids, flags) in streams.items():
        n = len(ids) // seq_len
        arr = np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)
        bad = np.asarray(flags[: n * seq_len], dtype=bool).reshape(n, seq_len).any(axis=1)
        if pattern is not None and n:
            # Belt and braces: also compare on the decoded text of each block.
            texts = tokenizer.batch_decode(arr.tolist())
            bad |= np.array([contains_prompt(t, pattern) for t in texts], dtype=bool)
        dropped[split] = int(bad.sum())
        blocks[split] = arr[~bad].astype(dtype)

    info: dict[str, Any] = {
        "key": key,
        "seq_len": seq_len,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "python": sys.version.split()[0],
        "stdlib": sysconfig.get_paths()["stdlib"],
        "sources": per_source,
        "files": {s: sum(1 for v in splits.values() if v == s) for s in ("train", "heldout")},
        "heldout_files": sorted(k for k, v in splits.items() if v == "heldout"),
        "blocks": {s: int(b.shape[0]) for s, b in blocks.items()},
        "tokens": {s: int(b.size) for s, b in blocks.items()},
        "workload_prompts": len(prompts),
        "prompt_occurrences": occurrences,
        "blocks_dropped_for_prompts": dropped,
        "separator_id": sep,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, train=blocks["train"], heldout=blocks["heldout"], info=np.array(json.dumps(info)))
    os.replace(tmp, path)
    return Corpus(blocks["train"], blocks["heldout"], info)
