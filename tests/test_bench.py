"""`eespec bench`: the plan, records and their schema, CSV / markdown / plots, resume, the busy-seconds
metric, replay clients, and the harness end to end on tiny models (fast); `--quick` on the default pair
(slow)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from eespec.bench.cells import MODES, BenchConfig, CellSpec, plan_cells
from eespec.bench.harness import check_records, figures_of, run_bench, write_outputs
from eespec.bench.records import FIGURES, SCHEMA_PATH, ResultStore, make_record, validate_records
from eespec.cli import app
from shared.tiny import save_tiny_pair

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("bench-pair"))


def tiny_config(pair, **overrides) -> BenchConfig:
    target, draft = pair
    settings = {
        "target": target,
        "draft": draft,
        "exits": (1,),
        "workloads": ("code",),
        "rtts_ms": (0.0, 20.0),
        "windows": (2, "adaptive"),
        "window_rtt_ms": 20.0,
        "concurrency": (1, 2),
        "sampled_rtts_ms": (0.0,),
        "prompts": 1,
        "repeats": 1,
        "max_tokens": 8,
        "warmup_tokens": 2,
        "pin": False,  # the test process must not stay pinned to one core
    }
    return BenchConfig(**(settings | overrides))


# -- plan ----------------------------------------------------------------------------------------------


def test_the_default_plan_is_sliced_as_documented():
    cfg = BenchConfig("t", "d", (20,))
    cells = plan_cells(cfg)
    assert len({c.id for c in cells}) == len(cells)
    assert {c.mode for c in cells} == set(MODES)
    for c in cells:
        if c.mode in ("edge-ar", "colocated-sd", "hf-assisted"):
            assert c.rtt_ms is None  # no network: measured once
        if c.mode in ("cloud-ar", "edge-ar"):
            assert c.window is None
        if c.window not in (None, 4):
            assert c.mode in ("sd", "sd-preempt") and c.rtt_ms == 50 and c.sampling == "greedy"
        if c.sampling == "sampled":
            assert c.rtt_ms in (None, 0, 50)
        if c.driver == "replay":
            assert (c.mode, c.rtt_ms, c.workload) == ("sd", 0, "code")
    assert sorted(c.concurrency for c in cells if c.driver == "replay") == [1, 2, 4, 8, 16]
    greedy_rtt = [c for c in cells if c.sampling == "greedy" and c.window in (None, 4) and c.driver == "live"]
    assert len(greedy_rtt) == 3 * (3 * 5 + 3)  # workloads × (networked modes × RTTs + local modes)


def test_cell_ids_and_config_fingerprints():
    cell = CellSpec("sd", "code", 50.0, "adaptive", sampling="sampled")
    assert cell.id == "sd/code/rtt=50/w=adaptive/c=1/sampled/live"
    assert CellSpec("cloud-ar", "code", None, None).id == "cloud-ar/code/rtt=-/w=-/c=1/greedy/live"
    a, b = BenchConfig("t", "d", (20,)), BenchConfig("t", "d", (20,), modes=("sd",))
    assert a.config_id == b.config_id  # which cells run is not part of the fingerprint
    assert a.config_id != BenchConfig("t", "d", (20,), max_tokens=64).config_id
    assert a.config_id != BenchConfig("t", "other", (20,)).config_id


def test_unknown_mode_is_a_clear_error():
    result = CliRunner().invoke(app, ["bench", "--modes", "sd,warp-drive", "--dry-run"])
    assert result.exit_code == 2
    assert "warp-drive" in result.output and "colocated-sd" in result.output
    result = CliRunner().invoke(app, ["bench", "--windows", "4,99", "--dry-run"])
    assert result.exit_code == 2 and "1..16" in result.output


# -- records, schema, outputs -----------------------------------------------------------------------------


def test_the_record_schema_is_valid_and_names_every_figure():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(FIGURES) <= set(schema["required"])


def _fake_run(tokens=20, latency=1.0, **more):
    run = {"tokens": tokens, "latency_s": latency, "ttft_s": 0.1, "cloud_busy_s": 0.4, "matches": True}
    return run | more


def _synthetic_records(cfg: BenchConfig) -> list[dict]:
    """Records with known figures: sd 10 tok/s with d=40, v=60 and r=100 ms; sd-preempt 12 tok/s."""
    records = []
    for cell in plan_cells(cfg):
        tps = {"cloud-ar": 25.0, "edge-ar": 80.0, "sd": 10.0, "sd-preempt": 12.0}.get(cell.mode, 20.0)
        extra_run = {}
        if cell.mode in ("sd", "sd-preempt"):
            extra_run = {
                "rounds": 10,
                "drafted": 40,
                "accepted": 10,
                "early_rounds": 10,
                "early_hits": 4,
                "draft_ms_per_round": 40.0,
                "server_ms_per_round": 60.0,
                "rtt_ms": 100.0,
                "bytes_up": 900,
                "bytes_down": 700,
            }
            if cell.mode == "sd-preempt":
                extra_run |= {"predraft_started": 10, "predraft_hits": 4}
        runs = [_fake_run(tokens=20, latency=20 / tps, **extra_run), _fake_run(tokens=20, latency=22 / tps)]
        figures = figures_of(runs)
        extra = {}
        if cell.driver == "replay":
            figures["aggregate_tokens_per_s"] = {"median": 9.0 * cell.concurrency, "min": 8.0, "max": 10.0}
            extra = {"live_check": {"live_over_replay_latency": 1.05}, "diverged": 0}
        records.append(
            make_record(
                cell,
                cfg,
                runs=runs,
                figures=figures,
                output_matches_target=cell.mode != "edge-ar",
                machine="test machine",
                command="eespec bench (test)",
                extra=extra,
            )
        )
    return records


def test_records_validate_and_every_output_is_written(tmp_path):
    cfg = BenchConfig("t", "d", (20,), note="CPU shared")
    records = _synthetic_records(cfg)
    assert validate_records(records) == []
    broken = dict(records[0], ms_per_token={"median": 1.0})
    assert validate_records([broken])  # min and max are required
    assert check_records(records, cfg) == []

    json_path = tmp_path / "r.json"
    files = write_outputs(records, cfg, tmp_path, command="eespec bench (test)", json_path=json_path)
    names = {p.name for p in files}
    assert {"results.csv", "results.md", "results.json", "r.json"} <= names
    plots = ("ms_per_token_vs_rtt", "speedup_vs_rtt", "cloud_cost_per_token", "capacity", "window_sweep")
    assert {f"{name}.png" for name in plots} <= names
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "r.json").read_text()) == records

    import csv

    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == len(records)
    assert {"ms_per_token_median", "cloud_busy_s_per_token_max", "output_matches_target"} <= set(rows[0])

    md = (tmp_path / "results.md").read_text()
    assert "## Pre-drafting ceiling" in md and "## Capacity" in md and "note: CPU shared" in md
    # d / (d + v + r) = 40 / 200 = 20 %; saved = 1 − 10/12 = 17 %, i.e. 83 % of the ceiling
    row = next(line for line in md.splitlines() if line.startswith("| code | 50 | 40.0 | 60.0 | 100.0"))
    assert "| 20% | 17% | 83% | 1.20× |" in row
    assert "stops paying" in md or "never pays" in md


def test_the_check_reports_a_mismatch_and_a_missing_mode():
    cfg = BenchConfig("t", "d", (20,))
    records = _synthetic_records(cfg)
    records[3] = dict(records[3], output_matches_target=False)
    records = [r for r in records if r["mode"] != "hf-assisted"]
    problems = check_records(records, cfg)
    assert any("hf-assisted has no record" in p for p in problems)
    assert any(records[3]["id"] in p and "differs" in p for p in problems)


def test_the_results_file_resumes_and_never_mixes_configurations(tmp_path):
    cfg = BenchConfig("t", "d", (20,))
    records = _synthetic_records(cfg)[:3]
    store = ResultStore(tmp_path / "results.jsonl")
    for record in records:
        store.append(record)
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"id": "cut sho')  # an interrupted write
    again = ResultStore(tmp_path / "results.jsonl")
    assert again.skipped_lines == 1
    cells = plan_cells(cfg)
    assert [again.done(c, cfg.config_id) for c in cells[:4]] == [True, True, True, False]
    other = BenchConfig("t", "d", (20,), max_tokens=99)
    assert not again.done(cells[0], other.config_id)
    assert again.records(cfg.config_id) == records and again.records(other.config_id) == []


# -- the server's busy seconds and the replay clients ------------------------------------------------------


def test_the_server_exports_busy_seconds(target_model):
    from shared.tiny import tiny_tokenizer
    from tests.servers import running_server, tiny_loaded

    auth = {"Authorization": "Bearer k"}

    def busy(url):
        for line in httpx.get(url + "/metrics", headers=auth).text.splitlines():
            if line.startswith("eespec_busy_seconds_total "):
                return float(line.split()[1])
        raise AssertionError("no eespec_busy_seconds_total")

    with running_server(tiny_loaded(target_model, tiny_tokenizer()), api_key=["k"]) as url:
        before = busy(url)
        body = {"prompt": [5, 6, 7], "max_tokens": 6, "temperature": 0}
        assert httpx.post(url + "/v1/completions", json=body, headers=auth).status_code == 200
        assert busy(url) > before


def test_replay_clients_reproduce_a_recorded_generation(pair):
    from edge_client.draft import DraftEngine
    from eespec.bench.modes import RecordingEdgeClient, run_sd
    from eespec.bench.replay import capacity_pass, replay_client
    from shared.models import load_model
    from tests.servers import running_server, tiny_loaded

    target_model, tokenizer = load_model(pair[0])
    draft_model, _ = load_model(pair[1])
    ids = tokenizer("def f(x):").input_ids

    async def scenario(url):
        engine = DraftEngine(draft_model)
        async with RecordingEdgeClient(url, engine, tokenizer=tokenizer, api_key="k", window=3) as client:
            live = await run_sd(client, ids, max_tokens=12, sampling=None)
        recording = live["recording"]
        assert recording["hello"]["type"] == "hello" and recording["start"]["token_ids"] == ids
        assert len(recording["rounds"]) == live["rounds"] >= 1
        replayed = await replay_client(url, "k", recording)
        assert replayed["diverged"] is None and replayed["tokens"] == live["tokens"]
        both = await capacity_pass(url, "k", [recording], 3)
        assert [r["tokens"] for r in both["runs"]] == [live["tokens"]] * 3 and both["wall_s"] > 0
        tampered = json.loads(json.dumps(recording))
        tampered["rounds"][0]["verdict"]["token"] = -1
        assert "round 1" in (await replay_client(url, "k", tampered))["diverged"]

    with running_server(tiny_loaded(target_model, tokenizer, exits=(1,)), api_key=["k"]) as url:
        asyncio.run(scenario(url))


# -- the harness end to end on tiny models ----------------------------------------------------------------


def test_the_harness_end_to_end_on_tiny_models_and_resume(pair, tmp_path):
    cfg = tiny_config(pair, note="test")
    out = tmp_path / "out"
    outcome = run_bench(cfg, out, command="eespec bench (test)", json_path=tmp_path / "records.json")
    assert outcome.problems == [], outcome.problems
    records = json.loads((tmp_path / "records.json").read_text())
    assert {r["mode"] for r in records} == set(MODES)
    assert validate_records(records) == []
    assert len(records) == len(plan_cells(cfg))
    for r in records:
        assert r["tokens"] > 0 and r["tokens_per_s"] is not None
        if r["sampling"] == "greedy" and r["exact_mode"]:
            assert r["output_matches_target"] is True, r["id"]
        if r["sampling"] == "sampled":
            assert r["output_matches_target"] is None
    by_id = {r["id"]: r for r in records}
    sd = by_id["sd/code/rtt=20/w=4/c=1/greedy/live"]
    assert sd["rtt_ms_measured"]["median"] >= 15  # the emulated 20 ms round trip, jitter ±10 %
    assert sd["bytes_up"]["median"] > 0 and sd["draft_ms_per_round"] is not None
    assert by_id["cloud-ar/code/rtt=0/w=-/c=1/greedy/live"]["cloud_busy_s_per_token"]["median"] > 0
    assert by_id["edge-ar/code/rtt=-/w=-/c=1/greedy/live"]["cloud_busy_s_per_token"]["median"] == 0
    assert by_id["sd-preempt/code/rtt=20/w=adaptive/c=1/greedy/live"]["window"] == "adaptive"
    cap = by_id["sd/code/rtt=0/w=4/c=2/greedy/replay"]
    assert cap["aggregate_tokens_per_s"] is not None and cap["extra"]["diverged"] == 0
    assert cap["extra"]["live_check"]["live_matches"] is True
    assert (out / "capacity.png").exists() and (out / "results.md").exists()

    again = run_bench(cfg, out, command="eespec bench (test)")  # every cell is in the results file
    assert again.measured == 0 and again.skipped == len(records)
    assert [r["id"] for r in again.records] == [r["id"] for r in records]


def test_prompts_file_and_ngram_draft_end_to_end_on_tiny_models(pair, tmp_path):
    """--prompts-file runs the same cells on the user's prompts; a +ngram draft stays exact."""
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"mine": ["abc abc abc", "xyz xy"]}))
    target, draft = pair
    cfg = tiny_config(
        pair,
        draft=f"{draft}+ngram",
        workloads=("mine",),
        prompts_file=str(prompts),
        modes=("cloud-ar", "sd", "colocated-sd"),
        sweeps=("rtt",),
        rtts_ms=(0.0,),
    )
    out = tmp_path / "out"
    outcome = run_bench(cfg, out, command="eespec bench (test)", plots=False)
    assert outcome.problems == [], outcome.problems
    assert {r["workload"] for r in outcome.records} == {"mine"}
    for r in outcome.records:
        assert r["output_matches_target"] is True, r["id"]
        assert r["extra"]["prompts_file"] == str(prompts)
    # Other prompts under the same workload name are other cells.
    prompts.write_text(json.dumps({"mine": ["something else"]}))
    assert tiny_config(pair, workloads=("mine",), prompts_file=str(prompts)).config_id != cfg.config_id
    with pytest.raises(ValueError, match="no workload"):
        tiny_config(pair, workloads=("code",), prompts_file=str(prompts)).workload_specs()


def test_precision_is_part_of_the_configuration():
    base = BenchConfig("/some/tiny", "d", (1,))
    assert base.served_precision == "stored"
    assert BenchConfig("/some/tiny", "d", (1,), dtype="float32").config_id == base.config_id
    assert BenchConfig("/some/tiny", "d", (1,), dtype="bfloat16").config_id != base.config_id
    # `auto` is the default target's serving precision, bfloat16.
    assert BenchConfig("smollm2-135m-instruct", "d", (24,)).served_precision == "bfloat16"


def test_the_paper_pair_preset_dry_run(tmp_path):
    """`--pair paper` plans the Qwen2.5-Coder pair without pulling anything (a dry run measures nothing)."""
    from shared.defaults import PAIRS
    from shared.models import KNOWN_MODELS

    paper = PAIRS["paper"]
    assert paper.target in KNOWN_MODELS and paper.draft in KNOWN_MODELS
    result = CliRunner().invoke(
        app, ["bench", "--pair", "paper", "--dry-run", "--quick", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "cells" in result.output and not (tmp_path / "results.jsonl").exists()
    bad = CliRunner().invoke(app, ["bench", "--pair", "nope", "--dry-run", "--out", str(tmp_path)])
    assert bad.exit_code != 0


# -- the smoke test on the default pair ------------------------------------------------------------------


@pytest.mark.slow  # a few minutes on 2 cores: the default pair, a server and two helper processes
def test_quick_bench_on_the_default_pair(tmp_path):
    records_file = tmp_path / "records.json"
    command = [sys.executable, "-m", "eespec", "bench", "--quick", "--out", str(tmp_path / "out")]
    command += ["--json", str(records_file), "--no-plots"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    records = json.loads(records_file.read_text())
    assert {r["mode"] for r in records} == set(MODES)
    assert validate_records(records) == []
    greedy_exact = [r for r in records if r["sampling"] == "greedy" and r["exact_mode"]]
    assert greedy_exact and all(r["output_matches_target"] is True for r in greedy_exact)
    for r in records:
        for figure in ("ms_per_token", "tokens_per_s", "cloud_busy_s_per_token"):
            assert r[figure] is not None, (r["id"], figure)
        if r["mode"] in ("sd", "sd-preempt", "colocated-sd", "hf-assisted"):
            assert r["mean_accepted_len"] is not None, r["id"]
        if r["mode"] == "sd-preempt" and r["driver"] == "live":
            assert r["predraft_hit_rate"] is not None or r["extra"]["predraft_by_source"] == {}
