"""The engine core's scheduler: batched verification stays exact (DESIGN.md, "Server execution and capacity").

Sessions run concurrently, each in its own thread with the in-process decoding loop, against one
`Scheduler`: their windows meet in the queue and run as packed forwards. Greedy outputs must equal the
target's `generate()`, sampled ones must equal the same seed's generation run alone, and the law of the
sampled output must be the target's.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cloud_server.engine import EarlyExitTarget, ExitHeads, TargetSession
from cloud_server.engine.batched import EXACT_BATCH_ROWS, Segment, packed_forward
from cloud_server.engine.scheduler import Scheduler, VerifyWork
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from shared.attention import ROWWISE_ATTENTION
from shared.errors import ProtocolError
from shared.protocol import Draft, Early, Verdict
from shared.sampling import SamplingParams
from shared.tiny import tiny_llama
from tests.helpers import PerturbedDraft, oracle_greedy, twin


def rowwise(model):
    model.set_attn_implementation(ROWWISE_ATTENTION)
    return model


class ScheduledVerifier:
    """A `Verifier` whose rounds go through the scheduler (batched with the other threads' rounds)."""

    def __init__(self, scheduler: Scheduler, session: TargetSession, exits: Sequence[int] | None = None):
        self.scheduler = scheduler
        self.session = session
        self.exits = exits

    def start(self, prompt_ids, sampling, max_tokens, stop=None, **extra):
        call = lambda: self.session.start(prompt_ids, sampling, max_tokens, stop, **extra)  # noqa: E731
        return self.scheduler.submit_call(call).result()

    def verify(self, draft: Draft, on_early: Callable[[Early], None] | None = None) -> Verdict:
        work = VerifyWork(self.session, draft, on_early, self.exits)
        return self.scheduler.submit_work(work).result()


@pytest.fixture(scope="module")
def pair():
    target = rowwise(tiny_llama(0, vocab_size=64, hidden_size=32, layers=4))
    heads = ExitHeads.untrained((1, 3), 32).double()
    return EarlyExitTarget(target, heads), tiny_llama(1, vocab_size=64, hidden_size=32, layers=1)


# (prompt length, window, preempt, exits, sampling temperature, perturbed positions)
MIX = [
    (3, 1, False, None, 0.0, set()),
    (9, 2, True, (1,), 0.0, {12, 15}),
    (17, 4, True, None, 0.0, {20}),
    (30, 3, False, (3,), 0.9, set()),
    (40, 6, True, (1, 3), 0.0, {42, 43, 50}),  # a prompt above the row-wise bound: a batched prefill
    (5, 8, False, None, 1.2, set()),
    (12, 5, True, None, 0.0, set()),
    (7, 2, True, (3,), 0.7, set()),
]
MAX_TOKENS = 24


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(2, 64, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _decoder(target: EarlyExitTarget, draft_model, verifier_for, case) -> SpeculativeDecoder:
    _, window, preempt, exits, _, perturbed = case
    session = TargetSession(target, eos_ids=[])
    engine = PerturbedDraft(twin(draft_model), perturbed, 64) if perturbed else DraftEngine(twin(draft_model))
    return SpeculativeDecoder(engine, verifier_for(session, exits), window=window, preempt=preempt)


def _sampling(case, seed: int) -> SamplingParams:
    temperature = case[4]
    return SamplingParams(temperature=temperature, top_k=0, top_p=1.0, seed=seed)


def test_a_mixed_batch_is_exact_for_every_session(pair):
    target, draft_model = pair
    scheduler = Scheduler()
    try:
        barrier = threading.Barrier(len(MIX))

        def run(i: int):
            case = MIX[i]
            decoder = _decoder(target, draft_model, lambda s, e: ScheduledVerifier(scheduler, s, e), case)
            barrier.wait()
            return decoder.generate(_prompt(case[0], i), max_tokens=MAX_TOKENS, sampling=_sampling(case, i))

        with ThreadPoolExecutor(len(MIX)) as pool:
            results = list(pool.map(run, range(len(MIX))))
        stats = scheduler.stats
    finally:
        scheduler.shutdown()
    assert stats.max_batch >= 3, f"the sessions never shared a forward (largest batch {stats.max_batch})"
    for i, (case, result) in enumerate(zip(MIX, results, strict=True)):
        prompt = _prompt(case[0], i)
        if case[4] == 0.0:
            assert result.token_ids == oracle_greedy(target.model, prompt, MAX_TOKENS), f"session {i}"
        else:  # a sampled generation equals the same seed's generation run alone, in-process
            alone = _decoder(target, draft_model, lambda s, e: s, case)
            expected = alone.generate(prompt, max_tokens=MAX_TOKENS, sampling=_sampling(case, i))
            assert result.token_ids == expected.token_ids, f"session {i}"
        assert len(result.token_ids) == MAX_TOKENS


def test_packed_bfloat16_forward_is_bit_identical_to_each_sessions_own(pair):
    """The exactness the batch rests on: within `EXACT_BATCH_ROWS`, a packed bf16 forward gives each
    session the very logits, exit logits and cache its own forward gives."""
    model = rowwise(tiny_llama(3, vocab_size=64, hidden_size=32, layers=4, dtype=torch.bfloat16))
    target = EarlyExitTarget(model, ExitHeads.untrained((2,), 32).to(torch.bfloat16))
    prompts = [_prompt(n, n) for n in (5, 40, 13, 20)]
    windows = [[3, 4, 5], [7], [8, 9, 10, 11, 12, 13], list(range(2, 17))]
    assert sum(len(w) + 1 for w in windows) <= EXACT_BATCH_ROWS

    def run(batched: bool):
        caches, exits = [], []
        for p in prompts:
            cache = target.new_kv_cache()
            cache.forward(p[:-1], keep=1)
            caches.append(cache)
            exits.append([])
        segments = [
            Segment(c, [p[-1], *w], len(w) + 1, lambda _l, lg, _t, e=e: e.append(lg), frozenset({2}))
            for c, p, w, e in zip(caches, prompts, windows, exits, strict=True)
        ]
        rows = (
            packed_forward(target, segments) if batched else [target.forward_batch([s])[0] for s in segments]
        )
        return rows, exits, caches

    (solo, solo_exits, solo_caches), (packed, packed_exits, packed_caches) = run(False), run(True)
    for i in range(len(prompts)):
        assert torch.equal(solo[i], packed[i])
        assert torch.equal(solo_exits[i][0], packed_exits[i][0])
        assert packed_caches[i].ids == solo_caches[i].ids
        for a, b in zip(solo_caches[i].cache.layers, packed_caches[i].cache.layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_the_token_budget_bounds_a_step_and_the_oldest_go_first(pair):
    target, _ = pair
    scheduler = Scheduler(token_budget=8)
    try:
        gate = threading.Event()
        scheduler.submit_call(gate.wait)  # hold the thread so that the queue fills
        sessions, futures = [], []
        for i in range(5):
            session = TargetSession(target, eos_ids=[])
            session.start(_prompt(6, i), SamplingParams(), 20)
            sessions.append(session)
            draft = Draft(round=1, pos=len(session.committed), tokens=[5, 6, 7])  # 4 rows each
            futures.append(scheduler.submit_work(VerifyWork(session, draft, None, None)))
        gate.set()
        verdicts = [f.result(timeout=60) for f in futures]
        steps = [s.sessions for s in scheduler.stats.recent]
    finally:
        scheduler.shutdown()
    assert steps == [2, 2, 1]
    # The load each verdict saw: tokens waiting / budget (20 / 8 for the first step's two).
    assert [v.server_load for v in verdicts] == [2.5, 2.5, 1.5, 1.5, 0.5]


def test_a_job_whose_caller_left_is_dropped_between_steps(pair):
    target, _ = pair
    scheduler = Scheduler()
    try:
        gate = threading.Event()
        scheduler.submit_call(gate.wait)
        ran = []
        dropped = scheduler.submit_call(lambda: ran.append("dropped"))
        kept = scheduler.submit_call(lambda: ran.append("kept"))
        assert dropped.cancel()
        gate.set()
        kept.result(timeout=30)
    finally:
        scheduler.shutdown()
    assert ran == ["kept"]


def test_a_session_failing_inside_a_batch_fails_alone_and_its_retry_is_exact(pair):
    """One session's forward raises inside the packed forward: every session of the step is rolled back,
    each runs again alone, the others end exact, the failing one answers `internal` (retryable) and the
    same draft sent again continues exactly."""
    target, _ = pair
    scheduler = Scheduler()
    prompts = [_prompt(8, 100 + i) for i in range(3)]
    expected = [oracle_greedy(target.model, p, 6) for p in prompts]
    sessions = [TargetSession(target, eos_ids=[]) for _ in prompts]
    for session, prompt in zip(sessions, prompts, strict=True):
        session.start(prompt, SamplingParams(), 6)
    armed = [True]
    lm = sessions[1].kv_cache
    reset = lm.reset

    def break_cache() -> None:  # a fault that survives the rollback's fresh cache
        original = lm.cache.update

        def failing_update(key, value, layer_idx, *args, **kwargs):
            if armed[0] and layer_idx == 2:
                raise RuntimeError("injected fault in one session's cache")
            return original(key, value, layer_idx, *args, **kwargs)

        lm.cache.update = failing_update

    def reset_and_break() -> None:
        reset()
        break_cache()

    lm.reset = reset_and_break
    break_cache()
    try:
        gate = threading.Event()
        scheduler.submit_call(gate.wait)
        futures = []
        for session, exp in zip(sessions, expected, strict=True):
            tokens = exp[1:4]  # the oracle's own tokens: the whole window is accepted
            draft = Draft(round=1, pos=len(session.committed), tokens=tokens)
            futures.append(scheduler.submit_work(VerifyWork(session, draft, None, None)))
        gate.set()
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=60))
            except ProtocolError as exc:
                outcomes.append(exc)
        assert isinstance(outcomes[1], ProtocolError)
        assert outcomes[1].code == "internal" and outcomes[1].retryable
        for i in (0, 2):
            assert sessions[i].generated == expected[i][:5]
        assert sessions[1].generated == expected[1][:1]
        armed[0] = False
        draft = Draft(round=1, pos=len(sessions[1].committed), tokens=expected[1][1:4])
        scheduler.submit_work(VerifyWork(sessions[1], draft, None, None)).result(timeout=60)
        assert sessions[1].generated == expected[1][:5]
    finally:
        scheduler.shutdown()


# -- the sampled law through the batched scheduler --------------------------------------------------


@pytest.mark.slow  # 2000 generations on 8 threads: ~100 s on the shared 2-core machine
def test_batched_speculative_sampling_matches_the_target_distribution():
    from tests.test_sampling_exact import ALPHA, PROMPT, VOCAB, chi_square, detectable_distance, exact_joint

    target = rowwise(tiny_llama(10, vocab_size=VOCAB, hidden_size=16, layers=2, heads=2, init_std=0.5))
    draft = copy.deepcopy(target)
    noise = torch.randn(
        draft.lm_head.weight.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    with torch.no_grad():
        draft.lm_head.weight.add_(0.6 * noise)
    draft.set_attn_implementation("sdpa")
    params = SamplingParams(temperature=1.0)
    early_exit = EarlyExitTarget(target, ExitHeads.untrained((1,), 16).double())
    scheduler = Scheduler()
    n_runs, threads = 2000, 8
    counts = np.zeros((VOCAB, VOCAB))
    lock = threading.Lock()

    def run(offset: int) -> None:
        session = TargetSession(early_exit, eos_ids=[])
        decoder = SpeculativeDecoder(
            DraftEngine(twin(draft)), ScheduledVerifier(scheduler, session), window=2
        )
        for seed in range(offset, n_runs, threads):
            result = decoder.generate(PROMPT, max_tokens=4, sampling=params.model_copy(update={"seed": seed}))
            with lock:
                counts[result.token_ids[2], result.token_ids[3]] += 1

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
        max_batch = scheduler.stats.max_batch
    finally:
        scheduler.shutdown()
    p_value, df = chi_square(counts, exact_joint(target, params))
    print(f"batched: p={p_value:.3f} df={df} max batch {max_batch} ({time.perf_counter() - t0:.1f} s)")
    assert max_batch >= 2
    assert detectable_distance(df, n_runs) <= 0.08
    assert p_value > ALPHA, f"the batched output law differs from the target's (p={p_value:.2e}, df={df})"
