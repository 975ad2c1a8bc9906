"""Chunked prefill (issue 12, item 13): a long prompt goes to the model in chunks, one scheduler call each,
so other sessions' rounds run between them — and the result is bit-identical to the one-shot prefill that
transformers' `generate()` runs, in bfloat16 too."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_server.engine import EarlyExitTarget, EngineLimits, InferenceWorker, TargetSession
from cloud_server.settings import ServerSettings
from shared.attention import MIN_PREFILL_CHUNK, ROWWISE_MAX_QUERIES, prompt_pieces, refill_pieces
from shared.kv import CachedLM
from shared.precision import apply_precision
from shared.protocol import Draft
from shared.sampling import SamplingParams
from shared.tiny import tiny_llama
from tests.helpers import build_decoder, oracle_greedy, twin

VOCAB = 64


def _ids(n: int, seed: int = 0, vocab: int = VOCAB) -> list[int]:
    return [int(t) for t in torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))]


def _prefill(model, pieces: list[list[int]]) -> tuple[torch.Tensor, CachedLM]:
    """Feed `pieces` (the prompt's chunks) as the engine does: each attending to the whole prompt's keys."""
    cache = CachedLM(model)
    logits = None
    total = sum(map(len, pieces))
    for piece in pieces:
        logits = cache.forward(piece, keep=1, keys_to=total if len(pieces) > 1 else None)
    return logits, cache


def _same_cache(a: CachedLM, b: CachedLM) -> bool:
    return a.ids == b.ids and all(
        torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
        for x, y in zip(a.cache.layers, b.cache.layers, strict=True)
    )


# -- how a prompt is cut ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), chunk=st.one_of(st.none(), st.just(0), st.integers(MIN_PREFILL_CHUNK, 1024)))
def test_prompt_pieces_cover_the_prompt_in_long_enough_chunks(n, chunk):
    prompt = list(range(n))
    pieces = prompt_pieces(prompt, chunk)
    assert [t for p in pieces for t in p] == prompt
    if not chunk or n <= chunk:
        assert pieces == ([prompt] if n else [])
    else:
        assert len(pieces) == -(-n // chunk)
        assert all(ROWWISE_MAX_QUERIES < len(p) <= chunk for p in pieces)  # batched, like the one-shot
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_chunks_too_short_to_run_batched_are_refused():
    with pytest.raises(ValueError, match="at least"):
        prompt_pieces(list(range(500)), MIN_PREFILL_CHUNK - 1)
    with pytest.raises(ValueError):
        ServerSettings(prefill_chunk_tokens=40)
    assert ServerSettings(prefill_chunk_tokens=0).prefill_chunk_tokens == 0  # 0: never chunk
    assert ServerSettings().prefill_chunk_tokens == 256


def test_refill_pieces_chunk_the_prompt_and_keep_the_generated_tail_short():
    ids = list(range(700))
    pieces = refill_pieces(ids, prompt_len=600, chunk_tokens=256)
    assert [len(p) for p in pieces] == [200, 200, 200, 32, 32, 32, 4]
    assert [t for p in pieces for t in p] == ids


# -- bit-identical to the one-shot prefill ----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bfloat16", "int8", "stored"])
def test_a_chunked_prefill_equals_the_one_shot_prefill(precision):
    """Bit for bit where the row-wise attention serves (bf16, int8); to rounding through SDPA."""
    model = tiny_llama(0, vocab_size=VOCAB, hidden_size=64, layers=3)
    if precision != "stored":
        model = apply_precision(model, precision)
    for n, chunk in ((300, 66), (300, 128), (513, 256), (1000, 256), (257, 256)):
        prompt = _ids(n, seed=n)
        one_logits, one = _prefill(model, [prompt])
        chunked_logits, chunked = _prefill(model, prompt_pieces(prompt, chunk))
        assert len(prompt_pieces(prompt, chunk)) > 1
        if precision == "stored":
            # float64 through SDPA: equal to rounding, as its windows are to its steps (test_precision).
            assert torch.allclose(one_logits, chunked_logits, rtol=0, atol=1e-12)
            continue
        assert torch.equal(one_logits, chunked_logits), (precision, n, chunk)
        assert _same_cache(one, chunked), (precision, n, chunk)


@pytest.mark.slow
def test_the_real_target_prefilled_in_chunks_equals_its_one_shot_prefill_and_generate():
    """SmolLM2-135M-Instruct as served (bf16, row-wise attention): a 1200-token prompt (a workload's code
    prompts, repeated) in the server's default 256-token chunks gives the one-shot prefill's keys, values and
    logits bit for bit, and a session started on it with chunking continues exactly as `generate()` does."""
    from shared.defaults import DEFAULT_TARGET
    from shared.precision import load_in_precision
    from shared.workloads import load_workload

    torch.set_num_threads(1)
    model, tokenizer = load_in_precision(DEFAULT_TARGET, "auto")
    workload = load_workload("code")
    text = "\n\n".join(workload.prompts * 40)
    prompt = tokenizer(text).input_ids[:1200]
    assert len(prompt) == 1200
    one_logits, one = _prefill(model, [prompt])
    chunked_logits, chunked = _prefill(model, prompt_pieces(prompt, ServerSettings().prefill_chunk_tokens))
    assert torch.equal(one_logits, chunked_logits)
    assert _same_cache(one, chunked)
    del one, chunked
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    reference = oracle_greedy(model, prompt, 12, eos=eos)
    limits = EngineLimits(prefill_chunk_tokens=256)
    session = TargetSession(EarlyExitTarget(model), eos_ids=[eos], limits=limits)
    session.start(prompt, SamplingParams(), max_tokens=12)
    while not session.finished:  # one-token windows of a token the target never picks: steps, in effect
        session.verify(Draft(round=session.round + 1, pos=len(session.committed), tokens=[0]))
    assert session.committed[len(prompt) :] == reference


@pytest.mark.parametrize("precision", ["bfloat16", "stored"])
def test_greedy_speculation_on_a_long_prompt_equals_generate(precision, unrelated_draft_model):
    target = tiny_llama(0, vocab_size=VOCAB, hidden_size=32, layers=4)
    if precision != "stored":
        target = apply_precision(target, precision)
    prompt = _ids(400, seed=3)
    reference = oracle_greedy(target, prompt, 24)
    for draft in (twin(target), unrelated_draft_model):
        decoder = build_decoder(target, draft, window=4, exits=(2,))
        decoder.verifier.limits = EngineLimits(max_window=16, prefill_chunk_tokens=100)
        assert decoder.generate(prompt, max_tokens=24).token_ids == reference


# -- the scheduler runs other sessions between chunks -----------------------------------------------------


class _RecordingCache(CachedLM):
    """A CachedLM that logs each forward's size (and tells `on_forward`)."""

    def __init__(self, model, log: list[tuple[str, int]], name: str) -> None:
        super().__init__(model)
        self.log, self.name = log, name
        self.on_forward = None

    def forward(self, new_ids, keep=1, keys_to=None):
        self.log.append((self.name, len(new_ids)))
        if self.on_forward is not None:
            self.on_forward()
        return super().forward(new_ids, keep, keys_to)


def _session(model, log, name: str, chunk: int | None) -> TargetSession:
    session = TargetSession(
        EarlyExitTarget(model, None), eos_ids=[], limits=EngineLimits(prefill_chunk_tokens=chunk)
    )
    session.kv_cache = _RecordingCache(model, log, name)
    return session


def test_other_sessions_rounds_run_between_the_chunks_of_a_long_prefill(target_model):
    log: list[tuple[str, int]] = []
    long = _session(target_model, log, "long", chunk=66)
    short = _session(target_model, log, "short", chunk=66)

    async def main():
        worker = InferenceWorker(token_budget=1)
        try:
            await worker.run(short.start, [1, 2, 3], SamplingParams(), 500)
            prefill = asyncio.ensure_future(
                worker.run_stepwise(long.start_stepwise(_ids(660), SamplingParams(), 8))
            )
            rounds = 0
            while not prefill.done() and not short.finished:
                draft = Draft(round=short.round + 1, pos=len(short.committed), tokens=[5, 6])
                await worker.verify(short, draft)
                rounds += 1
            return await prefill, rounds
        finally:
            worker.shutdown()

    started, rounds = asyncio.run(main())
    assert started.prompt_tokens == 660 and not long.finished
    assert [n for name, n in log if name == "long"] == [66] * 10
    long_at = [i for i, (name, _) in enumerate(log) if name == "long"]
    between = [name for name, _ in log[long_at[0] : long_at[-1]]]
    # The short session's rounds ran between the long prompt's chunks, not after all of them.
    assert between.count("short") >= 5 and rounds >= 5


def test_a_prefill_abandoned_between_chunks_stops_and_frees_its_cache(target_model):
    log: list[tuple[str, int]] = []
    session = _session(target_model, log, "long", chunk=66)

    async def main():
        worker = InferenceWorker()
        try:
            loop = asyncio.get_running_loop()
            first_chunk = asyncio.Event()
            session.kv_cache.on_forward = lambda: loop.call_soon_threadsafe(first_chunk.set)
            task = asyncio.ensure_future(
                worker.run_stepwise(session.start_stepwise(_ids(660), SamplingParams(), 8))
            )
            await first_chunk.wait()  # the first chunk is running on the model thread
            task.cancel()  # its client went away
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            worker.shutdown()

    asyncio.run(main())
    assert [n for _, n in log] == [66]  # the chunk that was running finished; no other ran
    assert session.finished and session.kv_bytes == 0
