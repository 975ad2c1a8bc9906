"""The default pair (bfloat16, row-wise attention) through the batching scheduler: greedy == generate()."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cloud_server.engine import TargetSession, load_target
from cloud_server.engine.batched import EXACT_BATCH_ROWS, Segment, packed_forward
from cloud_server.engine.scheduler import Scheduler
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from shared.defaults import DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, DEFAULT_TARGET
from shared.models import load_model
from shared.sampling import SamplingParams
from shared.workloads import load_workload
from tests.helpers import oracle_greedy
from tests.test_scheduler import ScheduledVerifier

pytestmark = pytest.mark.slow
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    loaded = load_target(DEFAULT_TARGET, exit_layers=list(DEFAULT_EXIT_LAYERS))
    draft, _ = load_model(DEFAULT_DRAFT)
    return loaded, draft


def test_packed_forward_of_the_real_target_is_bit_identical_within_the_row_bound(served):
    loaded, _ = served
    target = loaded.early_exit
    prompts = [loaded.tokenizer(text).input_ids for text in ("def add(a, b):", "The weather", "Move the arm")]
    windows = [[13, 14, 15, 16, 17], [220, 221, 222, 223, 224, 225, 226, 227], list(range(300, 316))]
    assert sum(len(w) + 1 for w in windows) <= EXACT_BATCH_ROWS

    def run(batched: bool):
        caches, exits = [], []
        for p in prompts:
            cache = target.new_kv_cache()
            cache.forward(p[:-1], keep=1)
            caches.append(cache)
            exits.append([])
        layers = frozenset(DEFAULT_EXIT_LAYERS)
        segments = [
            Segment(c, [p[-1], *w], len(w) + 1, lambda _l, lg, _t, e=e: e.append(lg), layers)
            for c, p, w, e in zip(caches, prompts, windows, exits, strict=True)
        ]
        solo = None if batched else [target.forward_batch([s])[0] for s in segments]
        return (packed_forward(target, segments) if batched else solo), exits

    (solo, solo_exits), (packed, packed_exits) = run(False), run(True)
    for i in range(len(prompts)):
        assert torch.equal(solo[i], packed[i]), f"session {i}: logits differ"
        assert torch.equal(solo_exits[i][0], packed_exits[i][0]), f"session {i}: exit logits differ"


def test_batched_greedy_equals_generate_for_the_default_pair(served):
    loaded, draft = served
    prompts = []
    for name in ("code", "prose", "robot"):
        workload = load_workload(name)
        prompts += [workload.encode(loaded.tokenizer, p) for p in workload.prompts[:2]]
    windows = [2, 3, 4, 5, 3, 4]
    eos = sorted(loaded.eos_ids)
    scheduler = Scheduler()
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> list[int]:
        session = TargetSession(loaded.early_exit, eos_ids=loaded.eos_ids, tokenizer=loaded.tokenizer)
        verifier = ScheduledVerifier(scheduler, session)
        decoder = SpeculativeDecoder(DraftEngine(draft), verifier, window=windows[i], preempt=i % 2 == 0)
        barrier.wait()
        return decoder.generate(prompts[i], max_tokens=MAX_TOKENS, sampling=SamplingParams()).token_ids

    try:
        with ThreadPoolExecutor(len(prompts)) as pool:
            outputs = list(pool.map(run, range(len(prompts))))
        max_batch = scheduler.stats.max_batch
    finally:
        scheduler.shutdown()
    assert max_batch >= 2
    mismatched = [
        i
        for i, (prompt, output) in enumerate(zip(prompts, outputs, strict=True))
        if output != oracle_greedy(loaded.model, prompt, MAX_TOKENS, eos=eos[0])
    ]
    assert not mismatched, f"batched generations {mismatched} differ from generate()"
