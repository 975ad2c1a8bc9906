"""Replay clients for the capacity sweep: the server's load without the edges' drafting.

A live `sd` generation is recorded (`modes.run_sd`): its `hello` and `start`, then every draft frame with
the time the edge took before sending it (drafting included). A replay client opens its own websocket,
sends the same frames with the same pauses and checks that each verdict equals the recorded one — so many
of them cost the edge process almost nothing and the figure measures the server. Greedy verdicts are a
function of the committed tokens, so a faithful server answers exactly as it did live; a client whose
verdict differs stops there and is reported as diverged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import connect


class ReplayDiverged(Exception):
    pass


async def replay_client(url: str, api_key: str, recording: dict[str, Any]) -> dict[str, Any]:
    """Replay one recorded generation against `url` (http(s):// or ws(s)://); returns a run dict."""
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1).rstrip("/")
    if not ws_url.endswith("/v1/speculate"):
        ws_url += "/v1/speculate"
    sent = received = 0
    tokens = 0
    diverged: str | None = None
    rounds: list[tuple[float, float]] = []  # (sent, verdict received), perf_counter seconds
    headers = {"Authorization": f"Bearer {api_key}"}
    async with connect(ws_url, additional_headers=headers, max_size=None, compression=None) as ws:

        async def send(payload: dict[str, Any]) -> None:
            nonlocal sent
            text = json.dumps(payload, separators=(",", ":"))
            sent += len(text.encode())
            await ws.send(text)

        async def until(kind: str, round_no: int | None = None) -> dict[str, Any]:
            nonlocal received
            while True:
                text = await ws.recv()
                received += len(text) if isinstance(text, bytes) else len(text.encode())
                frame = json.loads(text)
                if frame.get("type") == "error":
                    raise ReplayDiverged(f"error frame {frame.get('code')}: {frame.get('message')}")
                if frame.get("type") == kind and (round_no is None or frame.get("round") == round_no):
                    return frame

        hello = dict(recording["hello"] or {"type": "hello", "protocol": 1})
        await send(hello)
        await until("welcome")
        t0 = time.perf_counter()
        await send(recording["start"])
        started = await until("started")
        t_first = time.perf_counter()
        tokens = 1
        try:
            for step in recording["rounds"]:
                await asyncio.sleep(step["think_s"])
                t_sent = time.perf_counter()
                await send(step["draft"])
                verdict = await until("verdict", step["draft"]["round"])
                rounds.append((t_sent, time.perf_counter()))
                expected = step["verdict"]
                if (verdict["accepted"], verdict["token"]) != (expected["accepted"], expected["token"]):
                    got = (verdict["accepted"], verdict["token"])
                    want = (expected["accepted"], expected["token"])
                    raise ReplayDiverged(f"round {step['draft']['round']}: verdict {got} ≠ recorded {want}")
                tokens += verdict["accepted"] + (verdict["token"] is not None)
                if verdict["finished"]:
                    break
        except ReplayDiverged as exc:
            diverged = str(exc)
        t_end = time.perf_counter()
    del started
    return {
        "tokens": tokens,
        "latency_s": t_end - t0,
        "ttft_s": t_first - t0,
        "t_start": t0,
        "t_end": t_end,
        "bytes_up": sent,
        "bytes_down": received,
        "diverged": diverged,
        "round_times": rounds,
    }


def recorded_figures(recording: dict[str, Any]) -> dict[str, int]:
    """Rounds, drafted and accepted tokens of a recording (what its replay makes the server verify)."""
    rounds = recording["rounds"]
    return {
        "rounds": len(rounds),
        "drafted": sum(len(r["draft"]["tokens"]) for r in rounds),
        "accepted": sum(r["verdict"]["accepted"] for r in rounds),
    }


async def capacity_pass(
    url: str,
    api_key: str,
    recordings: Sequence[dict[str, Any]],
    clients: int,
    live: Any | None = None,
) -> dict[str, Any]:
    """`clients` concurrent clients, all started together: replays (client i replays recording i mod P),
    or, when `live` (a coroutine factory returning a run dict) is given, client 0 is that live client.

    Returns per-client runs (kind 'replay' or 'live') and the wall time from the first start to the last
    finish."""

    async def one(i: int) -> dict[str, Any]:
        if live is not None and i == 0:
            t0 = time.perf_counter()
            run = await live()
            return run | {"kind": "live", "t_start": t0, "t_end": t0 + run["latency_s"]}
        return await replay_client(url, api_key, recordings[i % len(recordings)]) | {"kind": "replay"}

    runs = await asyncio.gather(*(one(i) for i in range(clients)))
    wall = max(r["t_end"] for r in runs) - min(r["t_start"] for r in runs)
    return {"runs": list(runs), "wall_s": wall, "tokens": sum(r["tokens"] for r in runs)}
