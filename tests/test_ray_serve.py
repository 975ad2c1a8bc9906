"""`eespec serve --ray --replicas 2` (issue 17, item 3): a real local Ray instance, two replicas behind Ray
Serve's proxy, real websockets and HTTP on loopback, tiny seeded models. Sessions spread over both
replicas; one replica killed (SIGKILL) mid-generation; every client still ends with the exact output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from eespec.processes import ServerProcess
from shared.models import load_model
from shared.sampling import SamplingParams
from shared.tiny import save_tiny_pair
from tests.helpers import oracle_greedy

pytestmark = pytest.mark.slow  # a Ray instance and two replica processes: ~30 s to start on 2 cores

KEY = "ray-key"
EOS = 2  # the tiny tokenizer's
PROMPTS = ["Hello there", "def f(x):", "The robot walks to", "Write a haiku"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("ray-pair"))


@pytest.fixture(scope="module")
def ray_server(pair):
    target, _ = pair
    server = ServerProcess(target, api_key=KEY, exits="1,3", ray_replicas=2, threads=1)
    server.start(timeout=600)
    try:
        yield server
    finally:
        server.stop()


async def _server_id(url: str) -> str:
    ws_url = url.replace("http://", "ws://") + "/v1/speculate"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1}))
        welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return welcome["server_id"]


def _clients(server: ServerProcess, draft_path: str, n: int) -> list[EdgeClient]:
    model, tok = load_model(draft_path)
    return [
        EdgeClient(server.url, DraftEngine(model), tokenizer=tok, api_key=KEY, window=4, backoff_s=0.2)
        for _ in range(n)
    ]


def test_sessions_spread_over_both_replicas_and_stay_exact(ray_server, pair):
    target_path, draft_path = pair
    target, tok = load_model(target_path)

    async def main():
        ids = {await _server_id(ray_server.url) for _ in range(16)}
        clients = _clients(ray_server, draft_path, 4)
        for client in clients:
            await client.connect()
        try:
            prompts = [tok(p).input_ids for p in PROMPTS]
            results = await asyncio.gather(
                *(c.generate(p, max_tokens=24) for c, p in zip(clients, prompts, strict=True))
            )
            spread = {c.welcome.server_id for c in clients}
        finally:
            for client in clients:
                await client.close()
        return ids, spread, prompts, results

    ids, _, prompts, results = asyncio.run(main())
    assert len(ids) == 2, f"16 sessions all went to {ids}"
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == oracle_greedy(target, prompt, 24, eos=EOS)
    completion = httpx.post(
        ray_server.url + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    assert completion.status_code == 200, completion.text
    expected = tok.decode(oracle_greedy(target, prompts[0], 8, eos=EOS))
    assert completion.json()["choices"][0]["text"] == expected
    health = httpx.get(ray_server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["server_id"] in ids


def test_a_replica_killed_mid_generation_every_client_ends_exact(ray_server, pair):
    """Six clients (four greedy, two sampled) over both replicas; once client 0 has 12 verified tokens, its
    replica's process is SIGKILLed. Its sessions reconnect through the proxy, find no session on the other
    replica (nothing is shared), and restart from their committed tokens: greedy output equals generate()
    token for token; sampled ones end by length or EOS. Ray then restarts the killed replica."""
    target_path, draft_path = pair
    target, tok = load_model(target_path)
    max_tokens = 96
    killed: list[str] = []
    # Client 0's greedy output is long enough that the kill at its 12th token lands mid-generation.
    assert len(oracle_greedy(target, tok(PROMPTS[0]).input_ids, max_tokens, eos=EOS)) > 40

    async def main():
        clients = _clients(ray_server, draft_path, 6)
        for client in clients:
            await client.connect()
        victim = clients[0].welcome.server_id
        on_victim = [c for c in clients if c.welcome.server_id == victim]
        seen = 0

        def on_event(event) -> None:
            nonlocal seen
            if event.kind == "tokens" and event.verified or event.kind == "verified":
                seen += len(event.token_ids)
            if seen >= 12 and not killed:
                killed.append(victim)
                os.kill(int(victim.split("-")[0]), signal.SIGKILL)

        prompts = [tok(PROMPTS[i % len(PROMPTS)]).input_ids for i in range(6)]
        samplings = [None, None, None, None, SamplingParams(temperature=0.8, seed=5), SamplingParams(seed=7)]
        try:
            results = await asyncio.gather(
                *(
                    c.generate(p, max_tokens=max_tokens, sampling=s, on_event=on_event if i == 0 else None)
                    for i, (c, p, s) in enumerate(zip(clients, prompts, samplings, strict=True))
                )
            )
        finally:
            for client in clients:
                await client.close()
        return prompts, samplings, results, len(on_victim)

    prompts, samplings, results, on_victim = asyncio.run(main())
    assert killed, "client 0 never reached 12 tokens"
    restarted = [r.extra["restarts"] for r in results]
    assert sum(1 for n in restarted if n) >= 1 and sum(restarted) >= 1, restarted
    assert on_victim >= 1
    for prompt, sampling, result in zip(prompts, samplings, results, strict=True):
        if sampling is None:
            assert result.token_ids == oracle_greedy(target, prompt, max_tokens, eos=EOS)
        elif result.finish_reason == "length":
            assert len(result.token_ids) == max_tokens
        else:  # a sampled generation may draw the EOS token
            assert result.finish_reason == "stop" and result.token_ids[-1] == EOS
    # Ray restarts the killed replica: both are serving again.
    ids: set[str] = set()
    deadline = time.monotonic() + 180
    while len(ids - set(killed)) < 2 and time.monotonic() < deadline:
        with contextlib.suppress(OSError, AssertionError, InvalidStatus):
            ids.add(asyncio.run(_server_id(ray_server.url)))
        time.sleep(0.5)
    assert len(ids - set(killed)) == 2, f"no replacement replica within 180 s: {ids}"


def test_ray_refuses_tls_and_bad_replica_counts(pair):
    target, _ = pair
    env = {**os.environ, "EESPEC_API_KEY": KEY}
    base = [sys.executable, "-m", "eespec", "serve", "--target", target, "--ray"]
    tls = subprocess.run(
        [*base, "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"], env=env, capture_output=True, text=True
    )
    assert tls.returncode == 2 and "--ray does not serve TLS" in tls.stderr
    zero = subprocess.run([*base, "--replicas", "0"], env=env, capture_output=True, text=True)
    assert zero.returncode == 2 and "replicas" in zero.stderr


def test_sigterm_shuts_serve_and_ray_down(ray_server):
    """Last in this module (it stops the shared server): SIGTERM ends the command cleanly, and the Ray
    processes it started (replicas, proxy, controller) go with it."""
    import psutil

    process = ray_server.process
    assert process is not None and process.poll() is None
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("ServeReplica" in " ".join(c.cmdline()) for c in children if c.is_running())
    process.terminate()
    assert process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
