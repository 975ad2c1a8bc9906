"""The link under real conditions: through the network emulator, output never changes."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from edge_client.events import StreamEvent
from eespec.netem import LinkProfile, NetworkEmulator
from shared.models import load_model
from shared.sampling import SamplingParams
from shared.tiny import save_tiny_pair, tiny_llama, tiny_tokenizer
from tests.conftest import DEVICE
from tests.helpers import PerturbedDraft, oracle_greedy, twin
from tests.servers import ServerProcess, free_port, running_server, tiny_loaded

KEY = "k"
PROMPT_TEXTS = ["Hello there", "def f(x):"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0, vocab_size=99, hidden_size=32, layers=4).to(DEVICE)
    model.generation_config.eos_token_id = 2
    return model


@pytest.fixture(scope="module")
def server(target, tok):
    with running_server(tiny_loaded(target, tok, exits=(1, 3)), api_key=[KEY]) as url:
        yield url


def emulator_for(url: str, **profile) -> NetworkEmulator:
    port = int(url.rsplit(":", 1)[1])
    link = LinkProfile.symmetric(**profile)
    return NetworkEmulator("127.0.0.1", port, up=link, down=link, seed=1)


def perturbed(target, prompt_len: int, sampling: SamplingParams | None = None) -> DraftEngine:
    """Greedy: the target except at a few positions (accepted windows and rejections both). Sampling: an
    unrelated small model (a perturbed token would fall outside its own proposal)."""
    if sampling is not None:
        return DraftEngine(tiny_llama(1, vocab_size=99, hidden_size=32, layers=1))
    return PerturbedDraft(twin(target), {prompt_len + 3, prompt_len + 4, prompt_len + 11}, 99)


async def generate_through(
    emu: NetworkEmulator, engine, tok, prompt_ids, max_tokens=16, sampling=None, **kwargs
):
    async with EdgeClient(emu.url(), engine, tokenizer=tok, api_key=KEY, backoff_s=0.02, **kwargs) as client:
        return await client.generate(prompt_ids, max_tokens=max_tokens, sampling=sampling)


@pytest.mark.parametrize(("rtt_ms", "jitter_ms"), [(0, 0), (20, 5), (100, 20), (200, 40)])
def test_greedy_exact_under_rtt_and_jitter(server, target, tok, rtt_ms, jitter_ms):
    async def main():
        async with emulator_for(server, rtt_ms=rtt_ms, jitter_ms=jitter_ms) as emu:
            for text in PROMPT_TEXTS:
                ids = tok(text).input_ids
                result = await generate_through(emu, perturbed(target, len(ids)), tok, ids)
                assert result.token_ids == oracle_greedy(target, ids, 16, eos=2), text
                if rtt_ms >= 100:
                    assert result.extra["rtt_ms_p50"] >= rtt_ms * 0.8

    asyncio.run(main())


def test_greedy_exact_under_stalls(server, target, tok):
    async def main():
        async with emulator_for(server, rtt_ms=10) as emu:
            emu.stall("down", 0.3, start_in=0.05)
            emu.stall("up", 0.2, start_in=0.5)
            ids = tok(PROMPT_TEXTS[0]).input_ids
            result = await generate_through(emu, perturbed(target, len(ids)), tok, ids, max_tokens=24)
            assert result.token_ids == oracle_greedy(target, ids, 24, eos=2)
            assert emu.stats().stalled_chunks > 0

    asyncio.run(main())


def _cut_after(marker: bytes):
    return lambda chunk: marker in chunk


CUTS = {
    "after hello": [b'"type":"welcome"'],
    "after start": [b'"type":"started"'],
    "between early and verdict": [b'"type":"early"'],
    "verdict lost": [b'"type":"verdict"'],
    "mid-resumed": [b'"type":"early"', b'"type":"resumed"'],
}


@pytest.mark.parametrize("step", list(CUTS))
@pytest.mark.parametrize(
    "sampling", [None, SamplingParams(temperature=0.9, top_k=20, seed=5)], ids=["greedy", "sampled"]
)
def test_disconnect_at_every_protocol_step(server, target, tok, step, sampling):
    """A reset right after a given frame: the client resumes and the output equals the uninterrupted one."""
    ids = tok(PROMPT_TEXTS[1]).input_ids

    async def main():
        async with emulator_for(server, rtt_ms=4) as reference_link:
            reference = await generate_through(
                reference_link, perturbed(target, len(ids), sampling), tok, ids, sampling=sampling
            )
        async with emulator_for(server, rtt_ms=4) as emu:
            for marker in CUTS[step]:
                emu.disconnect_when("down", _cut_after(marker))
            result = await generate_through(
                emu, perturbed(target, len(ids), sampling), tok, ids, sampling=sampling
            )
            assert emu.stats().forced_disconnects == len(CUTS[step])
        return reference, result

    reference, result = asyncio.run(main())
    if sampling is None:
        assert reference.token_ids == oracle_greedy(target, ids, 16, eos=2)
    assert result.token_ids == reference.token_ids
    assert result.extra["reconnects"] >= 1


def test_draft_in_flight_when_the_link_drops(server, target, tok):
    """The draft never reaches the server: the up link is stalled, then the connection is reset."""
    ids = tok(PROMPT_TEXTS[0]).input_ids

    async def main():
        async with emulator_for(server, rtt_ms=4) as emu:

            def on_started(chunk: bytes) -> bool:
                if b'"type":"started"' in chunk:
                    emu.stall("up", None)  # hold the first draft inside the emulator
                    loop = asyncio.get_running_loop()
                    loop.call_later(0.2, lambda: (emu.disconnect_all(), emu.resume("up")))
                return False

            emu.disconnect_when("down", on_started)
            result = await generate_through(emu, perturbed(target, len(ids)), tok, ids)
            assert emu.stats().forced_disconnects == 1
        return result

    result = asyncio.run(main())
    assert result.token_ids == oracle_greedy(target, ids, 16, eos=2)
    assert result.extra["reconnects"] == 1


def test_fallback_with_the_server_killed_and_restarted(tmp_path, tok):
    """Edge-only generation while the server is down; verified on return, rejected ones retracted."""
    target_path, _ = save_tiny_pair(tmp_path)
    target_model, _ = load_model(target_path)
    ids = tok("Hello there").input_ids
    max_tokens = 40
    expected = oracle_greedy(target_model, ids, max_tokens, eos=2)
    port = free_port()
    server = ServerProcess(target_path, port=port, api_key=KEY, exits="1,3").start()
    emitted: list[tuple[int, int]] = []  # (position in the visible output, token) of unverified tokens
    survived: list[tuple[int, int]] = []
    retracted: list[tuple[int, int]] = []
    visible: list[int] = []
    unverified: list[tuple[int, int]] = []
    episodes: list[list[tuple[int, int]]] = []  # one list per retract event
    restarted = threading.Event()

    def restart_later() -> None:
        server.kill()
        threading.Timer(1.5, lambda: (server.start(), restarted.set())).start()

    def on_event(event: StreamEvent) -> None:
        ids_ = list(event.token_ids)
        if event.kind == "tokens" and event.verified:
            visible.extend(ids_)
            if len(visible) >= 8 and not restarted.is_set() and server.process.poll() is None and not emitted:
                threading.Thread(target=restart_later).start()
        elif event.kind == "tokens":
            for token in ids_:
                item = (len(visible) + len(unverified), token)
                unverified.append(item)
                emitted.append(item)
        elif event.kind == "verified":
            confirmed, unverified[:] = unverified[: len(ids_)], unverified[len(ids_) :]
            assert [t for _, t in confirmed] == ids_
            survived.extend(confirmed)
            visible.extend(ids_)
        else:
            gone, unverified[:] = (
                unverified[len(unverified) - len(ids_) :],
                unverified[: len(unverified) - len(ids_)],
            )
            assert [t for _, t in gone] == ids_
            retracted.extend(gone)
            episodes.append(gone)

    async def main():
        draft = PerturbedDraft(twin(target_model), {len(ids) + 14, len(ids) + 20}, 99)
        async with EdgeClient(
            server.url,
            draft,
            tokenizer=tok,
            api_key=KEY,
            fallback="continue",
            fallback_budget_s=0.3,
            backoff_s=0.05,
            reconnect_timeout_s=60,
        ) as client:
            return await client.generate(ids, max_tokens=max_tokens, on_event=on_event)

    try:
        result = asyncio.run(main())
    finally:
        server.kill()
    output = expected  # positions count generated tokens
    assert result.token_ids == expected
    assert visible == expected and unverified == []
    assert emitted, "the edge generated nothing unverified while the server was down"
    assert result.extra["restarts"] == 1
    # Survivors are exactly the target's tokens; each retraction starts at a token the target rejected.
    assert all(output[pos] == token for pos, token in survived)
    assert sorted(survived + retracted) == sorted(emitted)
    for gone in episodes:
        # A retraction starts at the first unverified token the target rejected (or past the output's end);
        # everything after it goes with it, since it was drafted after a rejected token.
        pos, token = gone[0]
        assert pos >= len(output) or output[pos] != token, (gone, output[pos])
    assert result.extra["unverified_survived"] == len(survived)
    assert result.extra["retracted"] == len(retracted)
