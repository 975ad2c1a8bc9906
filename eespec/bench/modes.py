"""One runner per mode. Each measures one generation and returns a *run* dict:

    token_ids, tokens, latency_s, ttft_s, rounds, drafted, accepted, early_rounds, early_hits,
    predraft_started, predraft_hits, bytes_up, bytes_down, cloud_busy_s, draft_ms_per_round,
    server_ms_per_round, rtt_ms

(keys that do not apply are absent or None). The edge-side runners live in the edge process (this one);
`colocated-sd`, `hf-assisted` and the references run in a `LocalWorker` (`eespec.bench.worker`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from shared.protocol import Started, Verdict
from shared.sampling import SamplingParams

BUSY_METRIC = "eespec_busy_seconds"  # eespec_busy_seconds_total without the suffix the parser strips


def sampling_params(raw: dict[str, Any] | None) -> SamplingParams:
    if raw is None:
        return SamplingParams()
    return SamplingParams(
        temperature=raw["temperature"], top_k=raw["top_k"], top_p=raw["top_p"], seed=int(raw["seed"])
    )


async def scrape_busy_s(http: httpx.AsyncClient, server_url: str, api_key: str, replicas: int = 1) -> float:
    """The server's eespec_busy_seconds_total (model time of its inference worker). Behind one proxy with
    `replicas` replicas (`eespec serve --ray`), each scrape reaches one of them: scrape until every replica
    (told apart by `eespec_server_info{server_id}`) has answered, and sum theirs. Call it while idle."""
    seen: dict[str | None, float] = {}
    for _ in range(50 * replicas):
        response = await http.get(server_url + "/metrics", headers={"Authorization": f"Bearer {api_key}"})
        response.raise_for_status()
        busy, server_id = None, None
        for family in text_string_to_metric_families(response.text):
            if family.name == BUSY_METRIC:
                busy = sum(s.value for s in family.samples if s.name.endswith("_total"))
            elif family.name == "eespec_server_info":
                server_id = next((s.labels.get("server_id") for s in family.samples), None)
        if busy is None:
            raise RuntimeError("the server exports no eespec_busy_seconds_total (an older server?)")
        seen[server_id] = busy
        if len(seen) >= replicas:
            return sum(seen.values())
    raise RuntimeError(f"{len(seen)} of {replicas} replicas answered /metrics in {50 * replicas} scrapes")


# -- cloud-ar: the server's OpenAI route, streamed ------------------------------------------------------


async def run_cloud_ar(
    http: httpx.AsyncClient,
    url: str,
    api_key: str,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    sampling: dict[str, Any] | None,
) -> dict[str, Any]:
    """The target alone on the server, every token streamed (SSE) through the link."""
    body: dict[str, Any] = {
        "prompt": list(prompt_ids),
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sampling is None:
        body["temperature"] = 0
    else:
        body.update(
            temperature=sampling["temperature"],
            top_p=sampling["top_p"],
            top_k=sampling["top_k"],
            seed=int(sampling["seed"]),
        )
    text: list[str] = []
    usage: dict[str, Any] | None = None
    t_first = t_last = None
    headers = {"Authorization": f"Bearer {api_key}"}
    t0 = time.perf_counter()
    async with http.stream("POST", url + "/v1/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(f"the server failed mid-stream: {chunk['error']}")
            now = time.perf_counter()
            if chunk.get("choices"):
                t_first = t_first or now  # the first token's chunk (the server streams each token)
                t_last = now
                text.extend(c.get("text") or "" for c in chunk["choices"])
            if chunk.get("usage"):
                usage = chunk["usage"]
    if usage is None or t_first is None or t_last is None:
        raise RuntimeError("the stream ended without tokens or usage")
    return {
        "text": "".join(text),
        "tokens": int(usage["completion_tokens"]),
        "latency_s": t_last - t0,
        "ttft_s": t_first - t0,
        "server_ttft_ms": usage.get("ttft_ms"),
    }


# -- edge-ar: the draft alone in this process --------------------------------------------------------


def run_edge_ar(
    engine: DraftEngine,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    sampling: dict[str, Any] | None,
    eos_ids: Sequence[int],
) -> dict[str, Any]:
    """The draft model generating on its own, one token per forward (EOS included and final)."""
    params = sampling_params(sampling)
    committed = list(prompt_ids)
    eos = set(eos_ids)
    t0 = time.perf_counter()
    t_first = None
    while len(committed) - len(prompt_ids) < max_tokens:
        window = engine.draft(committed, 1, params)
        assert window is not None
        committed.append(window.tokens[0])
        t_first = t_first or time.perf_counter()
        if window.tokens[0] in eos:
            break
    t_end = time.perf_counter()
    generated = committed[len(prompt_ids) :]
    return {
        "token_ids": generated,
        "tokens": len(generated),
        "latency_s": t_end - t0,
        "ttft_s": (t_first or t_end) - t0,
        "cloud_busy_s": 0.0,
    }


# -- sd / sd-preempt: the edge client over the link ---------------------------------------------------


class RecordingEdgeClient(EdgeClient):
    """The edge client, noting when each frame left or arrived (for TTFT, per-round timing and replay)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[tuple[str, float, Any]] = []
        self.hello: dict[str, Any] | None = None  # sent on connect, before any generation

    async def _send(self, payload: dict[str, Any]) -> None:
        await super()._send(payload)
        if payload.get("type") == "hello":
            self.hello = payload
        self.frames.append(("up", time.perf_counter(), payload))

    async def _receive(self, timeout: float | None = None) -> Any:
        frame = await super()._receive(timeout)
        self.frames.append(("down", time.perf_counter(), frame))
        return frame


async def run_sd(
    client: RecordingEdgeClient,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int,
    sampling: dict[str, Any] | None,
) -> dict[str, Any]:
    """One generation with a connected client; the run carries a `recording` that replay clients re-send."""
    client.frames = []
    t0 = time.perf_counter()
    result = await client.generate(prompt_ids, max_tokens=max_tokens, sampling=sampling_params(sampling))
    t_end = time.perf_counter()
    m = result.metrics
    rounds, recording = _rounds(client.frames)
    recording["hello"] = recording["hello"] or client.hello
    recording["token_ids"] = list(result.token_ids)
    started = next(t for d, t, f in client.frames if d == "down" and isinstance(f, Started))
    server_ms = [r["verdict"]["server_ms"] for r in recording["rounds"]]
    rtts = [r["rtt_ms"] for r in rounds]
    return {
        "token_ids": result.token_ids,
        "tokens": len(result.token_ids),
        "latency_s": t_end - t0,
        "ttft_s": started - t0,
        "rounds": m.rounds,
        "drafted": m.drafted,
        "accepted": m.accepted,
        "early_rounds": m.early_rounds,
        "early_hits": m.early_hits,
        "predraft_started": m.predraft_started,
        "predraft_hits": m.predraft_hits,
        "draft_ms_per_round": 1000.0 * m.draft_s / m.rounds if m.rounds else None,
        "server_ms_per_round": statistics.fmean(server_ms) if server_ms else None,
        "rtt_ms": statistics.median(rtts) if rtts else None,
        "windows": result.extra.get("windows"),
        "predraft_by_source": result.extra.get("predraft_by_source"),
        "recording": recording,
    }


def _rounds(frames: list[tuple[str, float, Any]]) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Per-round timing, and the recording: hello, start, then each draft with the time the edge took
    before sending it (since the frame that let it: `started` or the previous verdict)."""
    recording: dict[str, Any] = {"hello": None, "start": None, "rounds": []}
    timing: list[dict[str, float]] = []
    last_down: float | None = None
    pending: tuple[float, dict[str, Any]] | None = None
    for direction, t, frame in frames:
        if direction == "up":
            kind = frame.get("type")
            if kind in ("hello", "start"):
                recording[kind] = frame
            elif kind == "draft":
                pending = (t, frame)
        elif isinstance(frame, Started):
            last_down = t
        elif isinstance(frame, Verdict) and pending is not None and frame.round == pending[1]["round"]:
            t_sent, draft = pending
            think = t_sent - last_down if last_down is not None else 0.0
            recording["rounds"].append(
                {
                    "think_s": max(0.0, think),
                    "draft": draft,
                    "verdict": {
                        "accepted": frame.accepted,
                        "token": frame.token,
                        "finished": frame.finished,
                        "server_ms": frame.server_ms,
                    },
                }
            )
            timing.append({"rtt_ms": max(0.0, (t - t_sent) * 1000.0 - frame.server_ms)})
            last_down, pending = t, None
    return timing, recording


# -- the helper process: colocated-sd, hf-assisted, references ----------------------------------------


class LocalWorker:
    """`python -m eespec.bench.worker` pinned to `cores` with `threads` torch threads; jobs over pipes."""

    def __init__(
        self, target: str, draft: str, *, cores: Sequence[int] | None, threads: int, dtype: str = "auto"
    ) -> None:
        self.target, self.draft, self.dtype = target, draft, dtype
        self.cores = list(cores) if cores is not None else None
        self.threads = threads
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 600.0) -> LocalWorker:
        command = [
            sys.executable,
            "-m",
            "eespec.bench.worker",
            "--target",
            self.target,
            "--draft",
            self.draft,
        ]
        command += ["--threads", str(self.threads), "--dtype", self.dtype]
        if self.cores is not None and hasattr(os, "sched_getaffinity") and (os.cpu_count() or 1) >= 2:
            command += ["--cores", ",".join(map(str, self.cores))]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"the bench worker did not start: {ready}")
        return self

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.poll()
            raise RuntimeError(f"the bench worker exited (code {code}); its errors are above")
        return json.loads(line)

    def call(self, op: str, **job: Any) -> dict[str, Any]:
        if self.process is None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **job}) + "\n")
        self.process.stdin.flush()
        result = self._read()
        if "error" in result:
            raise RuntimeError(f"bench worker, {op}: {result['error']}")
        return result

    async def acall(self, op: str, **job: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.call, op, **job)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
