"""`eespec bench`: plan the cells, measure the ones not yet in the results file, write every output.

Placement (DESIGN.md, "Measuring"): the cloud server is its own process (`eespec serve`) pinned to core 0
with `threads` torch threads; the edge is this process, pinned to core 1 with `threads` threads; the
network emulator runs in a thread of this process between them. colocated-sd and the greedy references
run in a helper process on the server's placement (core 0, `threads`), hf-assisted in a helper process
with both cores and both processes' threads (2 × `threads`); while they run, server and edge are idle.

Outputs in `--out`: results.jsonl (one record per finished cell, appended as it finishes — the resume
log), results.json, results.csv, results.md, PNG plots, bench_schema.json, references.json (the target's
own greedy outputs), replay/ (recorded sd generations for the capacity clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from eespec.bench import analysis, report
from eespec.bench.cells import (
    EXACT,
    NETWORKED,
    BenchConfig,
    CellSpec,
    CostModel,
    _run_seconds,
    estimate_seconds,
    plan_cells,
)
from eespec.bench.records import (
    SCHEMA_PATH,
    ResultStore,
    machine_line,
    make_record,
    summary,
    validate_records,
    write_csv,
)


@dataclass
class Outcome:
    records: list[dict[str, Any]]
    problems: list[str]
    measured: int
    skipped: int
    files: list[Path] = field(default_factory=list)


def describe_plan(cells: Sequence[CellSpec], cfg: BenchConfig, done: int) -> str:
    kinds: dict[str, int] = {}
    for cell in cells:
        key = "capacity" if cell.driver == "replay" else cell.sampling
        kinds[key] = kinds.get(key, 0) + 1
    parts = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (
        f"{len(cells)} cells ({parts}); {done} already in the results file; "
        f"{cfg.prompts} prompt(s) × {cfg.repeats} repeat(s) × ≤{cfg.max_tokens} tokens per cell"
    )


def run_bench(
    cfg: BenchConfig,
    out: Path,
    *,
    command: str,
    json_path: Path | None = None,
    plots: bool = True,
    dry_run: bool = False,
    console: Console | None = None,
) -> Outcome:
    console = console or Console()
    out = Path(out)
    cells = plan_cells(cfg)
    store = ResultStore(out / "results.jsonl")
    todo = [c for c in cells if not store.done(c, cfg.config_id)]
    slow = estimate_seconds(todo, cfg, CostModel(tokens_per_round=1.1))
    fast = estimate_seconds(todo, cfg, CostModel(tokens_per_round=2.5))
    console.print(f"[bold]eespec bench[/] → {out}  (config {cfg.config_id})")
    console.print(describe_plan(cells, cfg, len(cells) - len(todo)))
    console.print(
        f"estimated duration for {len(todo)} cell(s): ~{fast / 60:.0f} min if the draft yields 2.5 tokens "
        f"per round, ~{slow / 60:.0f} min at 1.1 (the provisional draft), on an otherwise idle 2-core "
        "machine; the progress bar's ETA follows the real pace"
    )
    if dry_run:
        for cell in todo:
            console.print(f"  {cell.id}")
        return Outcome([], [], 0, len(cells) - len(todo))
    if todo:
        session = _Session(cfg, out, store, command, console)
        asyncio.run(session.run(todo))
    wanted = {c.id for c in cells}
    records = [r for r in store.records(cfg.config_id) if r["id"] in wanted]
    files = write_outputs(
        records, cfg, out, command=command, json_path=json_path, plots=plots, console=console
    )
    print_summary(records, cfg, console)
    problems = check_records(records, cfg)
    if problems:
        console.print("[bold red]problems:[/]")
        for problem in problems:
            console.print(f"  • {problem}")
    return Outcome(records, problems, len(todo), len(cells) - len(todo), files)


# -- outputs -----------------------------------------------------------------------------------------


def run_meta(records: Sequence[dict[str, Any]], cfg: BenchConfig, command: str) -> dict[str, Any]:
    dates = sorted(r["date"] for r in records)
    machines = sorted({r["machine"] for r in records})
    return {
        "command": command,
        "date": f"{dates[0]} … {dates[-1]}" if dates else "–",
        "machine": "; ".join(machines) or "–",
        "target": cfg.target,
        "draft": cfg.draft,
        "exits": list(cfg.exits),
        "dtype": cfg.served_precision,
        "config_id": cfg.config_id,
        "prompts": cfg.prompts,
        "repeats": cfg.repeats,
        "max_tokens": cfg.max_tokens,
        "note": cfg.note,
    }


def write_outputs(
    records: Sequence[dict[str, Any]],
    cfg: BenchConfig,
    out: Path,
    *,
    command: str,
    json_path: Path | None = None,
    plots: bool = True,
    console: Console | None = None,
) -> list[Path]:
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    files = []
    meta = run_meta(records, cfg, command)
    payload = {"meta": meta, "config": cfg.to_dict(), "records": records}
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    write_csv(records, out / "results.csv")
    (out / "results.md").write_text(report.markdown(records, meta, cfg.default_window) + "\n")
    shutil.copyfile(SCHEMA_PATH, out / "bench_schema.json")
    files += [out / "results.jsonl", out / "results.json", out / "results.csv", out / "results.md"]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=1) + "\n")
        files.append(json_path)
    if plots:
        try:
            from eespec.bench.plots import write_plots

            cost_rtt = cfg.window_rtt_ms if cfg.window_rtt_ms in cfg.rtts_ms else cfg.rtts_ms[0]
            files += write_plots(
                records, out, window=cfg.default_window, cost_rtt=cost_rtt, window_rtt=cfg.window_rtt_ms
            )
        except ImportError:
            console.print("[yellow]matplotlib is not installed: no plots (pip install -e '.[bench]')[/]")
    console.print("wrote " + ", ".join(str(p) for p in files))
    return files


def print_summary(records: Sequence[dict[str, Any]], cfg: BenchConfig, console: Console) -> None:
    from rich.table import Table

    if not records:
        return
    k = cfg.default_window
    cells = analysis.rtt_cells(records, k)
    table = Table(title=f"greedy, window {k}: tokens/s (median) — cloud ms/token — same as generate()")
    rtts = analysis.rtts_of(cells)
    table.add_column("mode")
    table.add_column("workload")
    for rtt in rtts:
        table.add_column(f"RTT {rtt:g}", justify="right")
    table.add_column("cloud ms/tok", justify="right")
    table.add_column("same", justify="center")
    for workload in analysis.workloads_of(cells):
        for mode in [m for m in cfg.modes]:
            row = [analysis.cell_at(cells, mode, workload, rtt) for rtt in rtts] or [
                analysis.lookup(cells, mode, workload, None)
            ]
            if not any(row):
                continue
            values = [report.fmt(r["tokens_per_s"], digits=1, spread=False) if r else "–" for r in row]
            costs = [analysis.median_of(r, "cloud_busy_s_per_token") for r in row if r]
            costs = [c for c in costs if c is not None]
            same = {r["output_matches_target"] for r in row if r}
            mark = "–" if same == {None} else ("yes" if same == {True} else "NO")
            if mode == "edge-ar":
                mark = "draft"  # the draft alone: not meant to equal the target
            cost = f"{1000 * min(costs):.1f}" if costs else "–"
            if costs and max(costs) - min(costs) > 1e-4:
                cost = f"{1000 * min(costs):.1f}–{1000 * max(costs):.1f}"
            table.add_row(mode, workload, *values, cost, mark)
    console.print(table)
    ceil = analysis.ceilings(records, k)
    if ceil:
        t2 = Table(title="pre-drafting ceiling d/(d+v+r) beside the sd-preempt gain (greedy)")
        for col in (
            "workload",
            "RTT",
            "d ms",
            "v ms",
            "r ms",
            "ceiling",
            "saved",
            "reached",
            "pre/sd",
            "pre/cloud",
        ):
            t2.add_column(col, justify="left" if col == "workload" else "right")
        for r in ceil:
            t2.add_row(
                r["workload"],
                f"{r['rtt_ms']:g}",
                report._num(r["draft_ms"], 1),
                report._num(r["verify_ms"], 1),
                report._num(r["rtt_ms_measured"], 1),
                report._num(r["ceiling_saving"], pct=True),
                report._num(r["preempt_saving"], pct=True),
                report._num(r["reached"], pct=True),
                report._num(r["preempt_over_sd"]) + "×",
                report._num(r["preempt_over_cloud"]) + "×",
            )
        console.print(t2)
    cap = analysis.capacity(records)
    if cap:
        t3 = Table(title="capacity (replay clients, one server)")
        for col in (
            "workload",
            "clients",
            "aggregate tok/s",
            "latency s per client",
            "cloud ms/tok",
            "live/replay",
        ):
            t3.add_column(col, justify="left" if col == "workload" else "right")
        for r in cap:
            ratio = (r["extra"].get("live_check") or {}).get("live_over_replay_latency")
            t3.add_row(
                r["workload"],
                str(r["concurrency"]),
                report.fmt(r["aggregate_tokens_per_s"], digits=1, spread=False),
                report.fmt(r["latency_s"]),
                report.fmt(r["cloud_busy_s_per_token"], 1000.0, 1, spread=False),
                report._num(ratio) + ("×" if ratio is not None else ""),
            )
        console.print(t3)


def check_records(records: Sequence[dict[str, Any]], cfg: BenchConfig) -> list[str]:
    """What must hold after every run: each requested mode measured, every greedy output of an exact mode
    equal to the target's generate(), capacity replays faithful, every record valid against the schema."""
    problems = []
    for mode in cfg.modes:
        if not any(r["mode"] == mode for r in records):
            problems.append(f"mode {mode} has no record")
    for r in records:
        if r["sampling"] == "greedy" and r["exact_mode"] and r["output_matches_target"] is not True:
            problems.append(f"{r['id']}: output differs from the target's generate()")
        if r["driver"] == "replay" and r["extra"].get("diverged"):
            problems.append(
                f"{r['id']}: {r['extra']['diverged']} replay client(s) diverged from the recording"
            )
    try:
        problems += [f"schema: {e}" for e in validate_records(records)]
    except ImportError:
        problems.append("jsonschema is not installed: records not validated (pip install -e '.[bench]')")
    return problems


# -- measuring ---------------------------------------------------------------------------------------


def _sampling(cfg: BenchConfig, cell: CellSpec, seed: int) -> dict[str, Any] | None:
    if cell.sampling == "greedy":
        return None
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k, "seed": seed}


def _ids_key(ids: Sequence[int], max_tokens: int) -> str:
    text = json.dumps([list(ids), max_tokens], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ratio_per_run(runs: Sequence[dict[str, Any]], num: str, den: str) -> list[float | None]:
    return [r[num] / r[den] if r.get(den) else None for r in runs]


def figures_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{median, min, max} over runs of each figure (the run dict keys of `eespec.bench.modes`)."""

    def col(key: str) -> list[Any]:
        return [r.get(key) for r in runs]

    ms_per_token = [
        1000.0 * (r["latency_s"] - r["ttft_s"]) / (r["tokens"] - 1) if r["tokens"] > 1 else None for r in runs
    ]
    return {
        "latency_s": summary(col("latency_s")),
        "ttft_s": summary(col("ttft_s")),
        "ms_per_token": summary(ms_per_token),
        "tokens_per_s": summary(r["tokens"] / r["latency_s"] if r["latency_s"] > 0 else None for r in runs),
        "mean_accepted_len": summary(_ratio_per_run(runs, "accepted", "rounds")),
        "acceptance_rate": summary(_ratio_per_run(runs, "accepted", "drafted")),
        "early_exit_agreement": summary(_ratio_per_run(runs, "early_hits", "early_rounds")),
        "predraft_hit_rate": summary(_ratio_per_run(runs, "predraft_hits", "predraft_started")),
        "bytes_up": summary(col("bytes_up")),
        "bytes_down": summary(col("bytes_down")),
        "cloud_busy_s_per_token": summary(
            r["cloud_busy_s"] / r["tokens"] if r.get("cloud_busy_s") is not None and r["tokens"] else None
            for r in runs
        ),
        "draft_ms_per_round": summary(col("draft_ms_per_round")),
        "server_ms_per_round": summary(col("server_ms_per_round")),
        "rtt_ms_measured": summary(col("rtt_ms")),
    }


class _Session:
    """One process's worth of measuring: models, server, helper processes and the link, for `todo`."""

    def __init__(
        self, cfg: BenchConfig, out: Path, store: ResultStore, command: str, console: Console
    ) -> None:
        self.cfg, self.out, self.store, self.command, self.console = cfg, out, store, command, console
        self.server = None
        self.workers: dict[str, Any] = {}
        self.references: dict[str, list[int]] = {}
        self.prompt_ids: dict[str, list[list[int]]] = {}
        self.machine = ""
        self._restore: tuple[int, set[int] | None] | None = None

    # -- set-up ----------------------------------------------------------------------------------

    def _setup(self, todo: Sequence[CellSpec]) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from cloud_server.engine import eos_ids_of
        from edge_client.draft import DraftEngine
        from edge_client.proposers import make_proposer, split_draft_name
        from eespec.processes import ServerProcess, pin_to_core
        from shared.models import load_model, resolve_model

        hf_logging.disable_progress_bar()
        cfg = self.cfg
        self._restore = (
            torch.get_num_threads(),
            os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None,
        )
        if cfg.pin:
            pin_to_core(1)  # before any thread exists: the edge's threads inherit core 1
        torch.set_num_threads(cfg.threads)
        self.machine = machine_line(cfg.threads)
        with self.console.status("models…"):
            resolve_model(cfg.target)  # pulled here once, not by three processes at the same time
            draft_name, ngram = split_draft_name(cfg.draft)
            resolve_model(draft_name)
            draft_model, self.tokenizer = load_model(draft_name)
        self.engine = make_proposer(DraftEngine(draft_model), ngram=ngram)
        self.eos_ids = eos_ids_of(draft_model, self.tokenizer)
        specs = cfg.workload_specs()
        for workload in sorted({c.workload for c in todo}):
            spec = specs[workload]
            prompts = spec.prompts[: cfg.prompts]
            if len(prompts) < cfg.prompts:
                self.console.print(f"[yellow]{workload} has only {len(prompts)} prompt(s)[/]")
            self.prompt_ids[workload] = [spec.encode(self.tokenizer, p) for p in prompts]
        if any(c.mode in NETWORKED or c.driver == "replay" for c in todo):
            exits = ",".join(map(str, cfg.exits))
            self.server = ServerProcess(
                cfg.target, exits=exits, threads=cfg.threads, core=0 if cfg.pin else None, dtype=cfg.dtype
            )
            with self.console.status("starting the cloud server (core 0)…"):
                self.server.start()
        self._load_references(todo)

    def worker(self, kind: str):
        """'server': the server's placement (core 0, its threads); 'both': both cores, both threads."""
        from eespec.bench.modes import LocalWorker

        if kind not in self.workers:
            cores, threads = ([0], self.cfg.threads) if kind == "server" else ([0, 1], 2 * self.cfg.threads)
            if not self.cfg.pin:
                cores = None
            label = "colocated-sd / references" if kind == "server" else "hf-assisted"
            with self.console.status(f"starting the helper process for {label}…"):
                self.workers[kind] = LocalWorker(
                    self.cfg.target, self.cfg.draft, cores=cores, threads=threads, dtype=self.cfg.dtype
                ).start()
        return self.workers[kind]

    def _load_references(self, todo: Sequence[CellSpec]) -> None:
        path = self.out / "references.json"
        cache: dict[str, list[int]] = json.loads(path.read_text()) if path.exists() else {}
        scope = self._reference_scope
        needed = sorted({c.workload for c in todo if c.sampling == "greedy"})
        missing = [
            (w, ids)
            for w in needed
            for ids in self.prompt_ids[w]
            if scope + _ids_key(ids, self.cfg.max_tokens) not in cache
        ]
        if missing:
            worker = self.worker("server")
            with self.console.status(f"the target's own generate() on {len(missing)} prompt(s)…"):
                for _w, ids in missing:
                    result = worker.call("reference", prompt_ids=ids, max_tokens=self.cfg.max_tokens)
                    cache[scope + _ids_key(ids, self.cfg.max_tokens)] = result["token_ids"]
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=0) + "\n")
        self.references = cache

    def reference(self, ids: Sequence[int]) -> list[int] | None:
        return self.references.get(self._reference_scope + _ids_key(ids, self.cfg.max_tokens))

    @property
    def _reference_scope(self) -> str:
        """References are per target and precision (float32 and stored precision keep the older key)."""
        served = self.cfg.served_precision
        return f"{self.cfg.target}|" if served in ("float32", "stored") else f"{self.cfg.target}|{served}|"

    def _teardown(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                worker.stop()
        if self.server is not None:
            self.server.stop()
        if self._restore is not None:  # leave the calling process as it was (tests run in one process)
            import torch

            threads, affinity = self._restore
            torch.set_num_threads(threads)
            if self.cfg.pin and affinity is not None:
                os.sched_setaffinity(0, affinity)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self, todo: Sequence[CellSpec]) -> None:
        import httpx

        try:
            self._setup(todo)
            weights = [_run_seconds(c, self.cfg, CostModel()) * max(1, c.concurrency) for c in todo]
            columns = (
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[n]}/{task.fields[total_cells]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as self.http:
                with Progress(*columns, console=self.console) as progress:
                    task = progress.add_task("", total=sum(weights), n=0, total_cells=len(todo))
                    for i, (cell, weight) in enumerate(zip(todo, weights, strict=True)):
                        progress.update(task, description=cell.id)
                        t0 = time.perf_counter()
                        record = await self.measure(cell)
                        self.store.append(record)
                        progress.advance(task, weight)
                        progress.update(task, n=i + 1)
                        progress.console.print(_one_line(record, time.perf_counter() - t0))
        finally:
            self._teardown()

    async def measure(self, cell: CellSpec) -> dict[str, Any]:
        if cell.driver == "replay":
            return await self._capacity(cell)
        runners = {
            "cloud-ar": self._cloud_ar,
            "edge-ar": self._edge_ar,
            "sd": self._sd,
            "sd-preempt": self._sd,
            "colocated-sd": self._local,
            "hf-assisted": self._local,
        }
        runs, notes, extra = await runners[cell.mode](cell)
        return self._record(cell, runs, notes, extra)

    def _record(self, cell, runs, notes, extra, figures=None, matches=None) -> dict[str, Any]:
        if matches is None and cell.sampling == "greedy":
            matches = all(r.get("matches") is True for r in runs) if runs else None
        return make_record(
            cell,
            self.cfg,
            runs=runs,
            figures=figures if figures is not None else figures_of(runs),
            output_matches_target=matches,
            machine=self.machine,
            command=self.command,
            notes=notes,
            extra=extra,
        )

    def _jobs(self, cell: CellSpec):
        """(prompt index, prompt ids, sampling) of each measured run: repeats × prompts."""
        for repeat in range(self.cfg.repeats):
            for i, ids in enumerate(self.prompt_ids[cell.workload]):
                yield i, ids, _sampling(self.cfg, cell, 1000 * repeat + i + 1)

    def _match_ids(self, cell: CellSpec, ids: Sequence[int], token_ids: Sequence[int]) -> bool | None:
        if cell.sampling != "greedy":
            return None
        reference = self.reference(ids)
        return None if reference is None else list(token_ids) == reference

    @contextlib.contextmanager
    def _link(self, rtt_ms: float):
        from eespec.netem import LinkProfile, NetworkEmulator

        assert self.server is not None
        profile = LinkProfile.symmetric(rtt_ms=rtt_ms, jitter_ms=rtt_ms / 2 * self.cfg.jitter)
        emulator = NetworkEmulator("127.0.0.1", self.server.port, up=profile, down=profile, seed=0)
        thread = emulator.start_in_thread()
        try:
            yield thread
        finally:
            thread.stop()

    async def _busy(self) -> float:
        from eespec.bench.modes import scrape_busy_s

        assert self.server is not None
        return await scrape_busy_s(self.http, self.server.url, self.server.api_key)

    async def _metered(self, link, run_coro) -> dict[str, Any]:
        """Run one generation with the server's busy seconds and the link's bytes read around it."""
        busy0, stats0 = await self._busy(), link.emulator.stats()
        run = await run_coro
        busy1, stats1 = await self._busy(), link.emulator.stats()
        run["cloud_busy_s"] = busy1 - busy0
        run["bytes_up"] = stats1.bytes_up - stats0.bytes_up
        run["bytes_down"] = stats1.bytes_down - stats0.bytes_down
        return run

    # -- the modes ---------------------------------------------------------------------------------

    async def _cloud_ar(self, cell: CellSpec):
        from eespec.bench.modes import run_cloud_ar

        assert self.server is not None and cell.rtt_ms is not None
        key = self.server.api_key
        runs = []
        with self._link(cell.rtt_ms) as link:
            url = link.url()
            first = self.prompt_ids[cell.workload][0]
            await run_cloud_ar(
                self.http,
                url,
                key,
                first,
                max_tokens=self.cfg.warmup_tokens,
                sampling=_sampling(self.cfg, cell, 0),
            )
            for _i, ids, sampling in self._jobs(cell):
                run = await self._metered(
                    link,
                    run_cloud_ar(self.http, url, key, ids, max_tokens=self.cfg.max_tokens, sampling=sampling),
                )
                reference = self.reference(ids) if cell.sampling == "greedy" else None
                if reference is not None:
                    # The route streams text; equal text and an equal token count is equal output here.
                    expected = self.tokenizer.decode(reference, skip_special_tokens=True)
                    run["matches"] = run["text"] == expected and run["tokens"] == len(reference)
                run.pop("text")
                runs.append(run)
        return runs, ["ttft_s: the first streamed chunk at the edge"], {}

    async def _edge_ar(self, cell: CellSpec):
        from eespec.bench.modes import run_edge_ar

        cfg = self.cfg
        first = self.prompt_ids[cell.workload][0]
        await asyncio.to_thread(
            run_edge_ar, self.engine, first, max_tokens=cfg.warmup_tokens, sampling=None, eos_ids=self.eos_ids
        )
        runs = []
        for _i, ids, sampling in self._jobs(cell):
            run = await asyncio.to_thread(
                run_edge_ar,
                self.engine,
                ids,
                max_tokens=cfg.max_tokens,
                sampling=sampling,
                eos_ids=self.eos_ids,
            )
            run["matches"] = self._match_ids(cell, ids, run.pop("token_ids"))
            runs.append(run)
        return runs, ["the draft alone in the edge process: not meant to equal the target's output"], {}

    def _client(self, url: str, cell: CellSpec):
        from eespec.bench.modes import RecordingEdgeClient

        assert self.server is not None
        return RecordingEdgeClient(
            url,
            self.engine,
            tokenizer=self.tokenizer,
            api_key=self.server.api_key,
            window=None if cell.window == "adaptive" else cell.window,
            preempt=cell.mode == "sd-preempt",
        )

    async def _sd(self, cell: CellSpec):
        from eespec.bench.modes import run_sd

        assert cell.rtt_ms is not None
        runs = []
        sources: dict[str, dict[str, int]] = {}
        windows: list[int] = []
        with self._link(cell.rtt_ms) as link:
            async with self._client(link.url(), cell) as client:
                first = self.prompt_ids[cell.workload][0]
                await run_sd(
                    client, first, max_tokens=self.cfg.warmup_tokens, sampling=_sampling(self.cfg, cell, 0)
                )
                for _i, ids, sampling in self._jobs(cell):
                    run = await self._metered(
                        link, run_sd(client, ids, max_tokens=self.cfg.max_tokens, sampling=sampling)
                    )
                    run["matches"] = self._match_ids(cell, ids, run.pop("token_ids"))
                    run.pop("recording")
                    for source, counts in (run.pop("predraft_by_source") or {}).items():
                        mine = sources.setdefault(source, {"started": 0, "hits": 0})
                        mine["started"] += counts["started"]
                        mine["hits"] += counts["hits"]
                    windows += run.pop("windows") or []
                    runs.append(run)
        extra: dict[str, Any] = {"windows_used": _histogram(windows)}
        if cell.mode == "sd-preempt":
            extra["predraft_by_source"] = sources
        notes = ["rtt_ms_measured: wait for the verdict minus the server's time, median per generation"]
        return runs, notes, extra

    async def _local(self, cell: CellSpec):
        kind = "server" if cell.mode == "colocated-sd" else "both"
        worker = self.worker(kind)
        first = self.prompt_ids[cell.workload][0]
        window = cell.window
        await worker.acall(
            cell.mode, prompt_ids=first, max_tokens=self.cfg.warmup_tokens, window=window,
            sampling=_sampling(self.cfg, cell, 0),
        )  # fmt: skip
        runs = []
        for _i, ids, sampling in self._jobs(cell):
            run = await worker.acall(
                cell.mode, prompt_ids=ids, max_tokens=self.cfg.max_tokens, window=window, sampling=sampling
            )
            run["matches"] = self._match_ids(cell, ids, run.pop("token_ids"))
            runs.append(run)
        if cell.mode == "colocated-sd":
            notes = [
                "both models in one process on the server's core and threads, no network, no exits; "
                "cloud busy = all its model time (drafting included)"
            ]
        else:
            notes = [
                f"transformers generate(assistant_model=draft), one process, {2 * self.cfg.threads} threads "
                "on both cores; accepted/drafted from forward-call counts; cloud busy = its wall time"
            ]
        return runs, notes, {}

    # -- capacity ----------------------------------------------------------------------------------

    async def _recordings(self, cell: CellSpec) -> list[dict[str, Any]]:
        """Live sd generations of the workload's prompts, recorded for replay (cached in replay/)."""
        from eespec.bench.modes import run_sd

        assert cell.rtt_ms is not None
        path = (
            self.out
            / "replay"
            / f"{self.cfg.config_id}-{cell.workload}-rtt{cell.rtt_ms:g}-w{cell.window}.json"
        )
        if path.exists():
            return json.loads(path.read_text())
        live = CellSpec("sd", cell.workload, cell.rtt_ms, cell.window)
        recordings = []
        with self._link(cell.rtt_ms) as link:
            async with self._client(link.url(), live) as client:
                first = self.prompt_ids[cell.workload][0]
                await run_sd(client, first, max_tokens=self.cfg.warmup_tokens, sampling=None)
                for ids in self.prompt_ids[cell.workload]:
                    run = await run_sd(client, ids, max_tokens=self.cfg.max_tokens, sampling=None)
                    recording = run["recording"]
                    recording["latency_s"] = run["latency_s"]
                    recording["matches"] = self._match_ids(live, ids, run["token_ids"])
                    recordings.append(recording)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recordings) + "\n")
        return recordings

    async def _capacity(self, cell: CellSpec) -> dict[str, Any]:
        from eespec.bench.modes import run_sd
        from eespec.bench.replay import capacity_pass, recorded_figures

        assert cell.rtt_ms is not None and self.server is not None
        recordings = await self._recordings(cell)
        key = self.server.api_key
        n = cell.concurrency
        runs: list[dict[str, Any]] = []
        aggregate: list[float] = []
        busy_per_token: list[float] = []
        bytes_up: list[float] = []
        bytes_down: list[float] = []
        first_client: list[float] = []  # client 0 replays recording 0 in every pass
        with self._link(cell.rtt_ms) as link:
            for _repeat in range(self.cfg.repeats):
                busy0, stats0 = await self._busy(), link.emulator.stats()
                result = await capacity_pass(link.url(), key, recordings, n)
                busy1, stats1 = await self._busy(), link.emulator.stats()
                aggregate.append(result["tokens"] / result["wall_s"])
                busy_per_token.append((busy1 - busy0) / result["tokens"])
                bytes_up.append((stats1.bytes_up - stats0.bytes_up) / n)
                bytes_down.append((stats1.bytes_down - stats0.bytes_down) / n)
                first_client.append(result["runs"][0]["latency_s"])
                for i, run in enumerate(result["runs"]):
                    runs.append(run | recorded_figures(recordings[i % len(recordings)]))
            live_check: dict[str, Any]
            if n == 1:
                live_check = {
                    "live_latency_s": recordings[0]["latency_s"],
                    "source": "the recording run itself",
                }
            elif self.cfg.capacity_live:
                async with self._client(
                    link.url(), CellSpec("sd", cell.workload, cell.rtt_ms, cell.window)
                ) as c:
                    ids = self.prompt_ids[cell.workload][0]

                    async def live() -> dict[str, Any]:
                        return await run_sd(c, ids, max_tokens=self.cfg.max_tokens, sampling=None)

                    checked = await capacity_pass(link.url(), key, recordings, n, live=live)
                live_run = checked["runs"][0]
                live_check = {
                    "live_latency_s": live_run["latency_s"],
                    "live_matches": self._match_ids(cell, ids, live_run["token_ids"]),
                    "source": f"1 live + {n - 1} replay clients",
                }
            else:
                live_check = {}
        if live_check.get("live_latency_s") is not None:
            replay_latency = summary(first_client)["median"]  # type: ignore[index]
            live_check["replay_latency_s"] = replay_latency
            live_check["live_over_replay_latency"] = live_check["live_latency_s"] / replay_latency
        diverged = [r["diverged"] for r in runs if r.get("diverged")]
        figures = figures_of(runs)
        figures.update(
            aggregate_tokens_per_s=summary(aggregate),
            cloud_busy_s_per_token=summary(busy_per_token),
            bytes_up=summary(bytes_up),
            bytes_down=summary(bytes_down),
            early_exit_agreement=None,
            predraft_hit_rate=None,
        )
        matches = all(r.get("matches") is True for r in recordings) and not diverged
        notes = [
            "replay clients re-send recorded sd draft windows with the recorded pauses (drafting included); "
            "latency, ttft and tokens_per_s are per client; aggregate_tokens_per_s is all clients' tokens "
            "over the wall time of a pass; bytes are the link's per client"
        ]
        extra = {"live_check": live_check, "diverged": len(diverged), "divergences": diverged[:5]}
        return self._record(cell, runs, notes, extra, figures=figures, matches=matches)


def _histogram(values: Sequence[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


def _one_line(record: dict[str, Any], seconds: float) -> str:
    tps = record["aggregate_tokens_per_s"] if record["driver"] == "replay" else record["tokens_per_s"]
    same = record["output_matches_target"]
    same_text = {True: "same", False: "[bold red]DIFFERENT[/]", None: "n/a"}[same]
    if same is False and record["mode"] not in EXACT:
        same_text = "differs (draft alone)"
    return (
        f"[green]✓[/] {record['id']}: {report.fmt(tps, digits=1, spread=False)} tok/s, "
        f"{report.fmt(record['ms_per_token'], digits=1, spread=False)} ms/token, {same_text} "
        f"[dim]({seconds:.0f} s, {datetime.datetime.now():%H:%M:%S})[/]"
    )
