"""`eespec demo`: the cloud server and an edge client on this machine, default models, side by side.

The server runs as its own process (pinned to one core where there are two), the edge client in this one
(pinned to the other), over real websockets and HTTP on loopback. Cloud-only generation goes through the
server's OpenAI-compatible streaming route; speculative runs go through /v1/speculate. "same" is checked
against the oracle, transformers' `generate()` of the target in the served precision, run here; the
closing line is computed from what was measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence

import httpx
import torch
from rich.console import Console
from rich.table import Table

from cloud_server.engine import shipped_exit_heads
from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from eespec.processes import ServerProcess, pin_to_core
from shared.defaults import DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, DEFAULT_TARGET
from shared.models import eos_ids_of, load_model, pull_model
from shared.precision import load_in_precision
from shared.sampling import SamplingParams


def _oracle(model, eos: list[int], prompt_ids: list[int], max_tokens: int) -> list[int]:
    """The target alone: transformers' greedy `generate()` (the project's exactness oracle)."""
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_tokens,
            eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else 0,
        )
    return out[0, ids.shape[1] :].tolist()


def _cloud_only(url: str, api_key: str, prompt: str, max_tokens: int) -> tuple[str, float]:
    """The target alone on the server, streamed over SSE: (text, seconds to the last token)."""
    body = {
        "model": DEFAULT_TARGET,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    text = []
    t0 = time.perf_counter()
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line.removeprefix("data: "))
                text.extend(choice.get("text") or "" for choice in chunk.get("choices", []))
    return "".join(text), time.perf_counter() - t0


def run_demo(prompts: Sequence[str], *, max_tokens: int, window: int, threads: int | None) -> None:
    console = Console()
    pull_model(DEFAULT_TARGET)
    pull_model(DEFAULT_DRAFT)
    server = ServerProcess(DEFAULT_TARGET, exits=",".join(map(str, DEFAULT_EXIT_LAYERS)), core=0)
    pin_to_core(1)
    torch.set_num_threads(threads or 1)
    draft_model, tokenizer = load_model(DEFAULT_DRAFT)
    engine = DraftEngine(draft_model)
    with console.status("loading the oracle (the target's own generate(), served precision)…"):
        oracle_model, _ = load_in_precision(DEFAULT_TARGET, "auto")
        eos = eos_ids_of(oracle_model, tokenizer)
    modes = {"cloud-ar": None, "sd": False, "sd-preempt": True}
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    identical = {mode: True for mode in modes}
    with console.status("starting the cloud server…"):
        server.start()
    url, api_key = server.url, server.api_key
    try:
        for prompt in prompts:
            prompt_ids = tokenizer(prompt).input_ids
            oracle_ids = _oracle(oracle_model, eos, prompt_ids, max_tokens)
            reference = tokenizer.decode(oracle_ids, skip_special_tokens=True)
            cloud_text, seconds = _cloud_only(url, api_key, prompt, max_tokens)
            identical["cloud-ar"] &= cloud_text == reference
            rows["cloud-ar"].append({"s": seconds, "tokens": len(oracle_ids)})
            for mode, preempt in modes.items():
                if preempt is None:
                    continue
                result = asyncio.run(
                    _speculate(url, api_key, engine, tokenizer, prompt_ids, max_tokens, window, preempt)
                )
                m = result.metrics
                identical[mode] &= list(result.token_ids) == oracle_ids
                rows[mode].append(
                    {
                        "s": m.total_s,
                        "tokens": m.generated_tokens,
                        "accepted": m.mean_accepted_len or 0.0,
                        "predraft_hits": m.predraft_hits,
                        "predraft_started": m.predraft_started,
                        "early_hits": m.early_hits,
                        "early_rounds": m.early_rounds,
                    }
                )
            console.print(f"[bold]{prompt}[/]{reference}\n")
    finally:
        server.stop()
    _print_table(console, rows, identical, len(prompts), max_tokens, window)


async def _speculate(url, api_key, engine, tokenizer, prompt_ids, max_tokens, window, preempt):
    async with EdgeClient(
        url, engine, tokenizer=tokenizer, api_key=api_key, window=window, preempt=preempt
    ) as client:
        return await client.generate(prompt_ids, max_tokens=max_tokens, sampling=SamplingParams())


def _print_table(console, rows, identical, n_prompts, max_tokens, window) -> None:
    table = Table(title=f"greedy, {n_prompts} prompts × up to {max_tokens} tokens, window {window}, loopback")
    for column in ("mode", "latency s", "tok/s", "acc/round", "early hits", "pre-draft hits", "same"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for mode, cells in rows.items():
        tokens_per_s = sum(c["tokens"] for c in cells) / sum(c["s"] for c in cells)
        speculative = mode != "cloud-ar"
        preemptive = mode == "sd-preempt"
        early = (
            f"{sum(c['early_hits'] for c in cells)}/{sum(c['early_rounds'] for c in cells)}"
            if speculative
            else "-"
        )
        predraft = (
            f"{sum(c['predraft_hits'] for c in cells)}/{sum(c['predraft_started'] for c in cells)}"
            if preemptive
            else "-"
        )
        table.add_row(
            mode,
            f"{statistics.median(c['s'] for c in cells):.2f}",
            f"{tokens_per_s:.1f}",
            f"{statistics.mean(c['accepted'] for c in cells):.2f}" if speculative else "-",
            early,
            predraft,
            "yes" if identical[mode] else "[bold red]NO[/]",
        )
    console.print(table)
    exits = "trained" if shipped_exit_heads(DEFAULT_TARGET) else "untrained"
    console.print(
        "[dim]same: output equal to the target's own generate() (speculative: token for token; cloud-ar: "
        "text). cloud-ar: the server alone, streamed; sd: speculative; sd-preempt: with early-exit "
        f"verdicts and pre-drafting. Exits after layers {', '.join(map(str, DEFAULT_EXIT_LAYERS))} "
        f"({exits}). Draft: {DEFAULT_DRAFT}.[/]"
    )
    console.print(conclusion(rows, identical))


def _tokens_per_s(cells: list[dict[str, float]]) -> float:
    return sum(c["tokens"] for c in cells) / sum(c["s"] for c in cells)


def conclusion(rows: dict[str, list[dict[str, float]]], identical: dict[str, bool]) -> str:
    """One sentence from the measured figures: exactness first, then speed against cloud-only."""
    if not all(identical.values()):
        wrong = ", ".join(mode for mode, same in identical.items() if not same)
        return f"[bold red]Output differs from the target's own generate() in: {wrong}. This is a bug.[/]"
    base = _tokens_per_s(rows["cloud-ar"])
    parts = []
    for mode in ("sd", "sd-preempt"):
        ratio = _tokens_per_s(rows[mode]) / base
        verdict = "faster" if ratio > 1.02 else "slower" if ratio < 0.98 else "on par"
        accepted = statistics.mean(c["accepted"] for c in rows[mode])
        parts.append(
            f"{mode} ran at {ratio:.2f}× cloud-ar's tokens/s ({verdict}; {accepted:.2f} draft tokens "
            "accepted per round)"
        )
    return (
        "Every mode produced the target's own output. "
        + "; ".join(parts)
        + ". Speculation pays where the draft is accepted often enough to cover a window's verification "
        "(benchmarks/RESULTS.md)."
    )
