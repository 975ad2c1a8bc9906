"""Cells of the benchmark: what one measurement is, which cells a run plans, and how long it should take.

A *cell* is one (mode, workload, RTT, window, concurrency, sampling) combination, measured over every
prompt of the workload slice × repeats. Its id is a readable string; with the configuration fingerprint
(models, exits, max_tokens, prompts, repeats, threads, sampling parameters) it keys the results file, so
a rerun skips finished cells and never mixes cells measured under another configuration.

The full grid (6 modes × 3 workloads × 5 RTTs × 5 windows × 2 samplings × 5 concurrencies) would take
days on two cores, so the plan is sliced (DESIGN.md, "Measuring"):

* rtt: every mode, every RTT, the default window, greedy, every workload (modes without a network —
  edge-ar, colocated-sd, hf-assisted — once, with rtt_ms null);
* window: sd and sd-preempt, every window (fixed and adaptive), greedy, at one RTT (50 ms);
* sampled: every mode at the default window, at RTT 0 and 50 ms only (`--quick`: one workload);
* capacity: sd at RTT 0 ms, one workload, 1..16 replay clients against one server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from shared.precision import resolve_precision
from shared.workloads import Workload, load_workload, load_workloads_file

MODES = ("cloud-ar", "edge-ar", "sd", "sd-preempt", "colocated-sd", "hf-assisted")
NETWORKED = frozenset({"cloud-ar", "sd", "sd-preempt"})  # the edge talks to the server through the link
WINDOWED = frozenset({"sd", "sd-preempt", "colocated-sd", "hf-assisted"})  # draft windows exist
# Modes whose greedy output must equal the target's generate(); edge-ar is the draft alone.
EXACT = frozenset(MODES) - {"edge-ar"}
SAMPLINGS = ("greedy", "sampled")
SWEEPS = ("rtt", "window", "sampled", "capacity")

Window = int | Literal["adaptive"]


@dataclass(frozen=True)
class CellSpec:
    mode: str
    workload: str
    rtt_ms: float | None  # None: the mode has no network between edge and cloud
    window: Window | None  # None: the mode drafts no windows
    concurrency: int = 1
    sampling: str = "greedy"
    driver: Literal["live", "replay"] = "live"  # replay: capacity clients that re-send recorded drafts

    @property
    def id(self) -> str:
        rtt = "-" if self.rtt_ms is None else f"{self.rtt_ms:g}"
        window = "-" if self.window is None else str(self.window)
        tail = f"c={self.concurrency}/{self.sampling}/{self.driver}"
        return f"{self.mode}/{self.workload}/rtt={rtt}/w={window}/{tail}"

    def key(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "workload": self.workload,
            "rtt_ms": self.rtt_ms,
            "window": self.window,
            "concurrency": self.concurrency,
            "sampling": self.sampling,
            "driver": self.driver,
        }


@dataclass
class BenchConfig:
    target: str
    draft: str
    exits: tuple[int, ...]
    dtype: str = "auto"  # the target's precision; its generate() in that precision is the reference
    modes: tuple[str, ...] = MODES
    workloads: tuple[str, ...] = ("code", "prose", "robot")
    rtts_ms: tuple[float, ...] = (0.0, 20.0, 50.0, 100.0, 200.0)
    windows: tuple[Window, ...] = (1, 2, 4, 8, "adaptive")
    default_window: int = 4
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    samplings: tuple[str, ...] = SAMPLINGS
    sweeps: tuple[str, ...] = SWEEPS
    prompts: int = 2  # first N prompts of each workload
    repeats: int = 2
    max_tokens: int = 32
    threads: int = 1  # torch threads of the server and of the edge (hf-assisted gets both: 2 × threads)
    jitter: float = 0.1  # jitter as a fraction of the one-way delay
    window_rtt_ms: float = 50.0
    sampled_rtts_ms: tuple[float, ...] = (0.0, 50.0)
    sampled_workloads: tuple[str, ...] | None = None  # default: every workload
    capacity_rtt_ms: float = 0.0
    capacity_workload: str | None = None  # default: the first workload
    capacity_live: bool = True  # a live client beside N−1 replay clients as a check (N ≥ 2)
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    warmup_tokens: int = 8
    quick: bool = False
    pin: bool = True  # pin this process to core 1 and the server to core 0 (off: tests in one process)
    note: str | None = None
    prompts_file: str | None = None  # the user's prompts ({"workload": [prompt, ...]}) instead of the shipped
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def served_precision(self) -> str:
        """The target's precision with `auto` resolved (shared.precision; "stored" = as its weights are)."""
        return resolve_precision(self.target, self.dtype)

    def workload_specs(self) -> dict[str, Workload]:
        """The workloads the cells name: from `prompts_file` when given, else the shipped ones."""
        if self.prompts_file is not None:
            specs = {w.name: w for w in load_workloads_file(Path(self.prompts_file))}
            missing = [w for w in self.workloads if w not in specs]
            if missing:
                raise ValueError(f"{self.prompts_file} has no workload {', '.join(missing)}")
            return {w: specs[w] for w in self.workloads}
        return {w: load_workload(w) for w in self.workloads}

    def fingerprint(self) -> dict[str, object]:
        """What makes two measurements of the same cell comparable (not which cells run)."""
        return {
            "target": self.target,
            "draft": self.draft,
            "exits": list(self.exits),
            # float32 (and stored-precision) runs keep their ids from before the option existed.
            **({} if self.served_precision in ("float32", "stored") else {"dtype": self.served_precision}),
            "prompts": self.prompts,
            "repeats": self.repeats,
            "max_tokens": self.max_tokens,
            "threads": self.threads,
            "jitter": self.jitter,
            "sampling": {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k},
            # A user's prompts are other cells than the shipped workloads of the same name.
            **({"prompts_sha256": _file_sha256(self.prompts_file)} if self.prompts_file else {}),
        }

    @property
    def config_id(self) -> str:
        text = json.dumps(self.fingerprint(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def parse_window(text: str) -> Window:
    text = text.strip()
    if text == "adaptive":
        return "adaptive"
    value = int(text)
    if not 1 <= value <= 16:
        raise ValueError(f"a window is 1..16 or 'adaptive', got {text!r}")
    return value


def plan_cells(cfg: BenchConfig) -> list[CellSpec]:
    """The sliced plan (see the module docstring), without duplicates, in an order that reuses links."""
    cells: list[CellSpec] = []
    modes = [m for m in MODES if m in cfg.modes]
    k = cfg.default_window

    def add(cell: CellSpec) -> None:
        if cell not in cells:
            cells.append(cell)

    def window_of(mode: str, window: Window) -> Window | None:
        return window if mode in WINDOWED else None

    def grid(sampling: str, rtts: Sequence[float], workloads: Sequence[str]) -> None:
        for workload in workloads:
            for mode in modes:
                if mode in NETWORKED:
                    for rtt in rtts:
                        add(CellSpec(mode, workload, rtt, window_of(mode, k), sampling=sampling))
                else:
                    add(CellSpec(mode, workload, None, window_of(mode, k), sampling=sampling))

    if "rtt" in cfg.sweeps and "greedy" in cfg.samplings:
        grid("greedy", cfg.rtts_ms, cfg.workloads)
    if "window" in cfg.sweeps and "greedy" in cfg.samplings:
        for workload in cfg.workloads:
            for mode in ("sd", "sd-preempt"):
                if mode in modes:
                    for window in cfg.windows:
                        add(CellSpec(mode, workload, cfg.window_rtt_ms, window))
    if "sampled" in cfg.sweeps and "sampled" in cfg.samplings:
        rtts = [r for r in cfg.rtts_ms if r in cfg.sampled_rtts_ms] or list(cfg.sampled_rtts_ms)
        workloads = [w for w in cfg.workloads if cfg.sampled_workloads is None or w in cfg.sampled_workloads]
        grid("sampled", rtts, workloads)
    if "capacity" in cfg.sweeps and "sd" in modes and cfg.workloads:
        workload = cfg.capacity_workload or cfg.workloads[0]
        for n in cfg.concurrency:
            add(CellSpec("sd", workload, cfg.capacity_rtt_ms, k, concurrency=n, driver="replay"))
    return cells


@dataclass(frozen=True)
class CostModel:
    """Rough per-operation costs on the 2-core reference machine, one thread (DESIGN.md, "Measuring").

    Only for the estimate printed before a run; the progress bar's ETA follows the real pace."""

    target_ms_per_token: float = 40.0
    draft_ms_per_token: float = 12.0
    verify_ms: float = 60.0
    prefill_ms: float = 120.0
    tokens_per_round: float = 1.5  # accepted + 1; near 1 with the provisional draft, more with a trained one
    cell_overhead_s: float = 1.5  # connection, warm-up bookkeeping, metric scrapes
    startup_s: float = 40.0  # server process, helper processes, references


def _run_seconds(cell: CellSpec, cfg: BenchConfig, cost: CostModel) -> float:
    t = cfg.max_tokens
    rtt = (cell.rtt_ms or 0.0) / 1000.0
    if cell.mode == "cloud-ar":
        return cost.prefill_ms / 1000 + rtt + t * cost.target_ms_per_token / 1000
    if cell.mode == "edge-ar":
        return t * cost.draft_ms_per_token / 1000
    k = cfg.default_window if not isinstance(cell.window, int) else cell.window
    rounds = t / cost.tokens_per_round
    round_s = (k * cost.draft_ms_per_token + cost.verify_ms) / 1000 + rtt
    if cell.mode == "hf-assisted":
        round_s *= 0.8  # two threads
    return cost.prefill_ms / 1000 + rtt + rounds * round_s


def estimate_seconds(cells: Sequence[CellSpec], cfg: BenchConfig, cost: CostModel | None = None) -> float:
    """A rough duration for `cells` (warm-ups and capacity replays included)."""
    cost = cost or CostModel()
    total = cost.startup_s if cells else 0.0
    for cell in cells:
        one = _run_seconds(cell, cfg, cost)
        warmup = one * cfg.warmup_tokens / cfg.max_tokens
        if cell.driver == "replay":
            # recording once, then N clients (server-bound: the server serialises their rounds), and the
            # live check with the same N
            server_s = one * 0.7
            total += cfg.repeats * cell.concurrency * server_s * (2 if cfg.capacity_live else 1)
            total += cost.cell_overhead_s
            continue
        total += cfg.prompts * cfg.repeats * one + warmup + cost.cell_overhead_s
    return total
