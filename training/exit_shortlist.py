"""The exit shortlist: the most frequent tokens of the offline corpus, read out by the exit heads instead of
the full vocabulary (DESIGN.md, "The early-exit target": an early verdict is only a prediction, so an exit
may read a shortlist — the window's draft tokens plus frequent tokens).

    python -m training.exit_shortlist --target smollm2-135m-instruct --size 4096 --low-ids 8192 \\
        --out cloud_server/exit_heads/smollm2-135m-instruct

Two frequency sources, united: the `size` most frequent tokens of the offline corpus (Python sources,
English), and the tokenizer's first `low_ids` ids — BPE merges are learned most frequent first, so low ids
are the frequent tokens of the tokenizer's own (web) training text, which the corpus lacks (chat answers,
markdown). Writes `shortlist.json` (ids, with how they were counted and their coverage of the
held-out split's tokens) beside `exits.json`; `ExitHeads.load` picks it up. Files that contain a benchmark
prompt are skipped, as for every training set.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from cloud_server.engine import SHORTLIST_NAME
from training.corpus import (
    contains_prompt,
    default_files,
    prompt_pattern,
    split_of,
    workload_prompts,
)


def count_tokens(tokenizer, *, max_files: int, seed: int, heldout_fraction: float):
    """Token counts of the train split and of the held-out split (files sampled evenly by name)."""
    pattern = prompt_pattern(workload_prompts())
    files = default_files()
    stride = max(1, len(files) // max_files)
    train: collections.Counter[int] = collections.Counter()
    heldout: collections.Counter[int] = collections.Counter()
    used = 0
    for text_file in files[::stride]:
        text = text_file.read()
        if contains_prompt(text, pattern):
            continue
        ids = tokenizer(text[:200_000]).input_ids
        split = split_of(text_file.name, seed, heldout_fraction)
        (heldout if split == "heldout" else train).update(ids)
        used += 1
    return train, heldout, used


def build_shortlist(
    tokenizer, size: int, *, low_ids: int, max_files: int, seed: int = 0, heldout_fraction: float = 0.1
):
    train, heldout, used = count_tokens(
        tokenizer, max_files=max_files, seed=seed, heldout_fraction=heldout_fraction
    )
    # Special tokens (EOS, chat markers) are always in: generations end and turn on them.
    special = sorted({int(t) for t in tokenizer.all_special_ids})
    ids = special + [t for t, _ in train.most_common() if t not in set(special)]
    ids = ids[:size]
    ids += [t for t in range(min(low_ids, len(tokenizer))) if t not in set(ids)]
    chosen = set(ids)
    total = sum(heldout.values())
    coverage = sum(n for t, n in heldout.items() if t in chosen) / total if total else None
    return {
        "ids": ids,
        "size": len(ids),
        "files": used,
        "train_tokens": sum(train.values()),
        "heldout_tokens": total,
        "heldout_coverage": coverage,
        "seed": seed,
        "corpus_top": size,
        "low_ids": low_ids,
        "source": "the corpus_top most frequent tokens of the offline corpus (training.corpus default_files, "
        "train split) and the tokenizer's first low_ids ids",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--low-ids", type=int, default=8192)
    parser.add_argument("--max-files", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the exit heads' folder")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from shared.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.target))
    payload = build_shortlist(
        tokenizer, args.size, low_ids=args.low_ids, max_files=args.max_files, seed=args.seed
    )
    payload["command"] = (
        f"python -m training.exit_shortlist --target {args.target} --size {args.size} "
        f"--low-ids {args.low_ids} --max-files {args.max_files} --seed {args.seed} --out {args.out}"
    )
    out = Path(args.out) / SHORTLIST_NAME
    out.write_text(json.dumps(payload) + "\n")
    print(
        f"{out}: {payload['size']} ids from {payload['files']} files, "
        f"held-out token coverage {payload['heldout_coverage']:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
