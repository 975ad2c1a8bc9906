"""Faults inside the engine (issue 12, defects 2 and 10): a failed forward never leaves a session serving
wrong tokens, a failing exit only drops its early frame, and degenerate sampling is refused at the door.

Faults are injected with forward hooks on the real tiny models: inside a decoder layer (the model raising
mid-forward, as an out-of-memory or a NaN check would), and inside the exit callback.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.target_session import EngineLimits, TargetSession
from edge_client.draft import DraftEngine
from shared.errors import ProtocolError
from shared.protocol import MESSAGE_ADAPTER
from shared.sampling import SamplingParams
from tests.helpers import oracle_greedy, twin

PROMPT = [3, 17, 42, 5]
SAMPLED = SamplingParams(temperature=0.8, top_k=20, top_p=0.95, seed=11)


class LayerFault:
    """A forward hook that raises inside decoder layer `layer` (0-based) while armed: the layers before it
    have already grown their KV cache, the ones after it have not."""

    def __init__(self, model, layer: int) -> None:
        self.armed = 0
        model.model.layers[layer].register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        if self.armed:
            self.armed -= 1
            raise RuntimeError("injected fault inside the forward (/secret/path/model.py)")


def _session(model, heads_layers=(1, 2)) -> TargetSession:
    heads = ExitHeads.untrained(heads_layers, model.config.hidden_size).double()
    return TargetSession(EarlyExitTarget(model, heads), eos_ids=[], limits=EngineLimits(max_window=8))


def _rounds(session: TargetSession, draft: DraftEngine, sampling, n, fault=None, fail_at=()):
    """n verification rounds; before each round in `fail_at` the fault fires once and the same frame is
    sent again (what an edge honouring `retryable: true` does)."""
    session.start(PROMPT, sampling, max_tokens=200)
    verdicts = []
    for r in range(1, n + 1):
        window = draft.draft(session.committed, 3, sampling)
        frame = window.to_message(r)
        if r in fail_at:
            fault.armed = 1
            with pytest.raises(ProtocolError) as info:
                session.verify(frame, on_early=lambda _e: None)
            assert info.value.code == "internal" and info.value.retryable
            assert info.value.round == r
            assert "secret" not in info.value.message  # never internal text
            assert session.kv_cache.ids == [] and session.round == r - 1
        verdicts.append(session.verify(frame, on_early=lambda _e: None))
        assert session.kv_cache.ids == session.committed[:-1]
    return [(v.accepted, v.token) for v in verdicts], list(session.committed)


@pytest.mark.parametrize("sampling", [SamplingParams(), SAMPLED], ids=["greedy", "sampled"])
def test_a_failed_forward_rolls_back_and_the_retry_is_the_uninterrupted_round(target_model, sampling):
    clean_model, faulty_model = twin(target_model), twin(target_model)
    fault = LayerFault(faulty_model, layer=2)
    draft = DraftEngine(twin(target_model))
    expected = _rounds(_session(clean_model), draft, sampling, 8)
    got = _rounds(_session(faulty_model), draft, sampling, 8, fault=fault, fail_at={1, 4, 5})
    assert got == expected
    if sampling.greedy:
        generated = expected[1][len(PROMPT) :]
        assert generated == oracle_greedy(target_model, PROMPT, len(generated))


def test_a_failed_prefill_leaves_no_generation_and_start_can_be_sent_again(target_model):
    model = twin(target_model)
    fault = LayerFault(model, layer=1)
    session = _session(model)
    fault.armed = 1
    with pytest.raises(ProtocolError) as info:
        session.start(PROMPT, SamplingParams(), max_tokens=10)
    assert info.value.code == "internal" and info.value.retryable
    assert session.finished and session.kv_bytes == 0
    started = session.start(PROMPT, SamplingParams(), max_tokens=10)
    assert started.first_token == oracle_greedy(target_model, PROMPT, 1)[0]


def test_an_error_inside_the_exit_callback_only_drops_that_early_frame(target_model):
    draft = DraftEngine(twin(target_model))
    clean, broken = _session(twin(target_model)), _session(twin(target_model))
    for session in (clean, broken):
        session.start(PROMPT, SAMPLED, max_tokens=50)
    seen: list[int] = []

    def failing_on_layer_1(early) -> None:
        if early.layer == 1:
            raise ValueError("injected fault in the exit callback")
        seen.append(early.layer)

    for r in range(1, 6):
        frame = draft.draft(clean.committed, 3, SAMPLED).to_message(r)
        want = clean.verify(frame, on_early=lambda _e: None)
        got = broken.verify(frame, on_early=failing_on_layer_1)
        assert (got.accepted, got.token, got.finished) == (want.accepted, want.token, want.finished)
    assert seen == [2] * 5  # the layer-2 frames still went out
    assert broken.early_exit.exit_failures == 5
    assert broken.committed == clean.committed


def test_an_exit_head_that_raises_only_drops_its_frame(target_model):
    session = _session(twin(target_model))

    def broken_adapter(_layer):
        raise RuntimeError("exit head exploded")

    session.early_exit.heads.adapter = broken_adapter
    session.start(PROMPT, SamplingParams(), max_tokens=20)
    earlies = []
    draft = DraftEngine(twin(target_model))
    verdict = session.verify(
        draft.draft(session.committed, 3, SamplingParams()).to_message(1), earlies.append
    )
    assert earlies == [] and verdict.accepted == 3  # the twin draft is the target: all accepted


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-307},
        {"temperature": 1e-5},
        {"temperature": -1},
        {"temperature": 101},
        {"temperature": "NaN"},
        {"temperature": "Infinity"},
        {"top_p": 0},
        {"top_p": "NaN"},
        {"top_k": -1},
        {"top_k": 2**40},
        {"seed": -1},
        {"seed": 2**63},
    ],
)
def test_degenerate_sampling_parameters_are_refused_at_the_door(sampling):
    with pytest.raises(ValidationError):
        SamplingParams(**sampling)
    with pytest.raises(ValidationError):
        MESSAGE_ADAPTER.validate_python({"type": "start", "token_ids": [1], "sampling": sampling})


def test_the_reproduced_degenerate_temperature_cannot_reach_the_engine(target_model):
    """Defect 10 as reported: before, 1e-307 passed as "positive" and poisoned every later round."""
    assert SamplingParams(temperature=1e-3).temperature == 1e-3  # the smallest accepted
    session = _session(twin(target_model))
    session.start(PROMPT, SamplingParams(temperature=1e-3, seed=1), max_tokens=30)
    draft = DraftEngine(twin(target_model))
    for r in range(1, 4):
        sampling = session.sampling
        session.verify(draft.draft(session.committed, 3, sampling).to_message(r), lambda _e: None)
    assert session.early_exit.exit_failures == 0
    assert session.kv_cache.ids == session.committed[:-1]
    assert torch.isfinite(torch.tensor(float(session.kv_bytes)))
