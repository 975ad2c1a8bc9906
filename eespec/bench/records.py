"""One JSON record per cell (schema: `schema.json` here, published as `benchmarks/bench_schema.json`),
the append-only results file that makes runs resumable, and the CSV export."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eespec.bench.cells import EXACT, BenchConfig, CellSpec

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema.json")

# Every record carries all of these, each {median, min, max} or null where it does not apply.
FIGURES = (
    "latency_s",
    "ttft_s",
    "ms_per_token",
    "tokens_per_s",
    "aggregate_tokens_per_s",
    "mean_accepted_len",
    "acceptance_rate",
    "early_exit_agreement",
    "predraft_hit_rate",
    "bytes_up",
    "bytes_down",
    "cloud_busy_s_per_token",
    "draft_ms_per_round",
    "server_ms_per_round",
    "rtt_ms_measured",
)

Figure = dict[str, float] | None


def summary(values: Iterable[float | None]) -> Figure:
    """{median, min, max} of the values that exist; None when none does."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{threads} torch thread(s) per process"
    )


def make_record(
    cell: CellSpec,
    cfg: BenchConfig,
    *,
    runs: Sequence[dict[str, Any]],
    figures: dict[str, Figure],
    output_matches_target: bool | None,
    machine: str,
    command: str,
    notes: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A record for `cell`. `runs` are the per-run dicts (each with `tokens`); `figures` the summaries."""
    unknown = set(figures) - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figures {sorted(unknown)}")
    greedy = cell.sampling == "greedy"
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": cell.id,
        "config_id": cfg.config_id,
        **cell.key(),
        "runs": len(runs),
        "tokens": int(sum(int(r.get("tokens", 0)) for r in runs)),
    }
    record.update({name: figures.get(name) for name in FIGURES})
    record.update(
        {
            "output_matches_target": output_matches_target if greedy else None,
            "exact_mode": cell.mode in EXACT,
            "target": cfg.target,
            "draft": cfg.draft,
            "exits": list(cfg.exits),
            "threads": 2 * cfg.threads if cell.mode == "hf-assisted" else cfg.threads,
            "max_tokens": cfg.max_tokens,
            "prompts": cfg.prompts,
            "repeats": cfg.repeats,
            "sampling_params": None
            if greedy
            else {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k},
            "machine": machine,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command,
            "note": cfg.note,
            "notes": list(notes),
            "extra": {
                "target_dtype": cfg.served_precision,
                **({"prompts_file": cfg.prompts_file} if cfg.prompts_file else {}),
                **(extra or {}),
            },
        }
    )
    return record


class ResultStore:
    """`results.jsonl`: one record per line, appended (and synced) as each cell finishes.

    A rerun skips the cells whose (id, config_id) is already there; records of another configuration
    stay in the file but are never mixed into this run's reports."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records: list[dict[str, Any]] = []
        self.skipped_lines = 0
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interrupted run
                    self.skipped_lines += 1
                    continue
                if isinstance(record, dict) and "id" in record and "config_id" in record:
                    self._records.append(record)

    def done(self, cell: CellSpec, config_id: str) -> bool:
        return any(r["id"] == cell.id and r["config_id"] == config_id for r in self._records)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._records.append(record)

    def records(self, config_id: str | None = None) -> list[dict[str, Any]]:
        """The latest record of each cell id (of `config_id` when given), in file order."""
        latest: dict[str, dict[str, Any]] = {}
        for record in self._records:
            if config_id is None or record["config_id"] == config_id:
                latest.pop(record["id"], None)
                latest[record["id"]] = record
        return list(latest.values())


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate_records(records: Iterable[dict[str, Any]]) -> list[str]:
    """Schema errors, as '<id>: message' lines (empty when every record is valid).

    Uses `jsonschema` (the `bench` / `dev` extras); raises ImportError without it."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = []
    for record in records:
        for error in validator.iter_errors(record):
            where = "/".join(map(str, error.absolute_path)) or "(record)"
            errors.append(f"{record.get('id', '?')}: {where}: {error.message}")
    return errors


CSV_KEYS = (
    "id",
    "config_id",
    "mode",
    "workload",
    "rtt_ms",
    "window",
    "concurrency",
    "sampling",
    "driver",
    "runs",
    "tokens",
    "output_matches_target",
    "exact_mode",
)


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per record; each figure as three columns `<figure>_median/_min/_max` (empty for null)."""
    columns = [*CSV_KEYS]
    for name in FIGURES:
        columns += [f"{name}_median", f"{name}_min", f"{name}_max"]
    columns += ["target", "draft", "threads", "max_tokens", "date", "machine"]
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for record in records:
            row = {key: _csv_value(record.get(key)) for key in columns if key in record}
            for name in FIGURES:
                figure = record.get(name) or {}
                for stat in ("median", "min", "max"):
                    row[f"{name}_{stat}"] = _csv_value(figure.get(stat))
            writer.writerow(row)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
