"""Early exits: callbacks fire mid-forward, never change the output, and heads load and save."""

from __future__ import annotations

import time

import pytest
import torch

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads, exit_logits
from cloud_server.engine.target_session import TargetSession
from shared.protocol import Draft
from shared.sampling import SamplingParams
from tests.helpers import build_decoder, oracle_greedy, twin


def scrambled_heads(layers, hidden, seed=0) -> ExitHeads:
    heads = ExitHeads.untrained(layers, hidden).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in heads.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return heads


def test_exit_callback_fires_before_later_layers_run(target_model):
    """Event order and timestamps around a deliberately slowed last layer."""
    model = twin(target_model)
    events: list[tuple[str, float]] = []
    slow_s = 0.2

    def slow_last_layer(_module, _inputs):
        events.append(("last layer starts", time.perf_counter()))
        time.sleep(slow_s)

    model.model.layers[-1].register_forward_pre_hook(slow_last_layer)
    target = EarlyExitTarget(model, ExitHeads.untrained((1, 2), 32).double())
    seq = target.new_kv_cache()
    seq.forward([0, 5, 7])
    t0 = time.perf_counter()
    target.forward(
        seq,
        [9, 10, 11],
        keep=3,
        on_exit=lambda layer, logits, t_ms: events.append((f"exit {layer}", time.perf_counter())),
    )
    t_end = time.perf_counter()
    names = [name for name, _ in events]
    assert names[-3:] == ["exit 1", "exit 2", "last layer starts"]
    exit_time = dict(events)["exit 2"]
    assert exit_time - t0 < (t_end - t0) - slow_s * 0.9, "the exit was delivered after the slowed layer"


def test_exit_logits_shape_and_zero_adapter_reads_the_base_model(target_model):
    target = EarlyExitTarget(twin(target_model), ExitHeads.untrained((2,), 32).double())
    captured: dict[int, torch.Tensor] = {}
    seq = target.new_kv_cache()
    seq.forward([0, 1, 2])
    target.forward(seq, [3, 4], keep=2, on_exit=lambda layer, logits, _t: captured.setdefault(layer, logits))
    assert captured[2].shape == (2, 64)
    # A zero-initialised adapter is the identity: the exit is the base model's own read-out of layer 2.
    with torch.no_grad():
        ids = torch.tensor([[0, 1, 2, 3, 4]], device=target.model.device)
        hidden = target.model(ids, output_hidden_states=True).hidden_states[2]
        expected = target.lm_head(target.norm(hidden[0, -2:]))
    torch.testing.assert_close(captured[2], expected)
    assert torch.equal(
        exit_logits(hidden[0, -2:], torch.nn.Identity(), target.norm, target.lm_head), expected
    )


def test_early_frames_carry_round_layer_and_mid_forward_time(target_model):
    target = EarlyExitTarget(twin(target_model), ExitHeads.untrained((1, 3), 32).double())
    session = TargetSession(target, eos_ids=[])
    started = session.start([0, 5, 7], SamplingParams(), max_tokens=10)
    frames = []
    verdict = session.verify(Draft(round=1, pos=4, tokens=[1, 2, 3]), frames.append)
    assert [f.layer for f in frames] == [1, 3]
    assert all(f.round == 1 and 0 <= f.accepted <= 3 and 0 <= f.confidence <= 1 for f in frames)
    assert all(f.t_ms <= verdict.verify_ms for f in frames)
    assert started.first_token == session.committed[3]


@pytest.mark.parametrize("window", [2, 5])
def test_early_predictions_never_change_the_output(target_model, unrelated_draft_model, window):
    prompt = [0, 3, 9, 27]
    expected = oracle_greedy(target_model, prompt, 25)
    variants = {
        "no exits": build_decoder(target_model, unrelated_draft_model, window=window),
        "zero adapters": build_decoder(target_model, unrelated_draft_model, window=window, exits=(1, 2, 3)),
        "scrambled": build_decoder(
            target_model, unrelated_draft_model, window=window, heads=scrambled_heads((1, 2), 32)
        ),
    }
    for name, decoder in variants.items():
        assert decoder.generate(prompt, max_tokens=25).token_ids == expected, name
    assert variants["no exits"].generate(prompt, max_tokens=25).metrics.early_predictions == 0


def test_sampled_output_is_the_same_with_exits_on_off_and_scrambled(target_model, unrelated_draft_model):
    """Early frames only steer pre-drafting; with the same seed the sampled output is identical."""
    params = SamplingParams(temperature=0.9, top_k=20, seed=1234)
    outputs = set()
    for heads in (None, ExitHeads.untrained((2,), 32).double(), scrambled_heads((1, 3), 32)):
        for preempt in (True, False):
            decoder = build_decoder(
                target_model, unrelated_draft_model, window=3, heads=heads, preempt=preempt
            )
            outputs.add(tuple(decoder.generate([0, 4, 8], max_tokens=30, sampling=params).token_ids))
    assert len(outputs) == 1


def test_perfect_exit_predicts_every_verdict(target_model):
    """With the same uniforms, an exit whose distribution equals the target's predicts every verdict.

    The last decoder layer is made the identity, so the exit after layer 3 reads exactly the final state."""
    model = twin(target_model)
    heads = ExitHeads.untrained((3,), 32).double()
    # Make the last decoder layer the identity so that the exit after layer 3 equals the final output.
    last = model.model.layers[3]
    with torch.no_grad():
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    draft = tiny_llama_draft().to(model.device)
    for params in (SamplingParams(), SamplingParams(temperature=1.0, seed=7)):
        decoder = build_decoder(model, draft, window=3, heads=heads)
        result = decoder.generate([0, 2, 4], max_tokens=30, sampling=params)
        assert result.metrics.early_hits == result.metrics.early_rounds == result.metrics.rounds
        assert result.metrics.predraft_hits >= result.metrics.rounds - 1


def tiny_llama_draft():
    from shared.tiny import tiny_llama

    return tiny_llama(1, vocab_size=64, hidden_size=32, layers=1)


def test_heads_save_and_load_roundtrip(tmp_path):
    heads = scrambled_heads((4, 8), 32)
    heads.save(tmp_path)
    loaded = ExitHeads.load(tmp_path, dtype=torch.float64)
    assert loaded.layers == (4, 8)
    for (name, a), (_, b) in zip(heads.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    lowrank = ExitHeads.untrained((3,), 32, kind="lowrank")
    lowrank.save(tmp_path / "lr")
    assert ExitHeads.load(tmp_path / "lr").config.kind == "lowrank"


def test_bad_exit_layers_are_rejected(target_model):
    with pytest.raises(ValueError, match="outside"):
        EarlyExitTarget(twin(target_model), ExitHeads.untrained((4,), 32))
    with pytest.raises(ValueError):
        ExitHeads.untrained((0,), 32)


def test_subset_and_resolution_of_heads(tmp_path):
    from cloud_server.engine.exits import resolve_exit_heads

    heads = scrambled_heads((4, 8, 12), 32)
    heads.save(tmp_path)
    sub = resolve_exit_heads("any", 32, [8], tmp_path)
    assert sub.layers == (8,)
    assert torch.equal(sub.adapter(8).proj.weight, heads.adapter(8).proj.weight)
    with pytest.raises(ValueError, match="no trained exit head"):
        resolve_exit_heads("any", 32, [5], tmp_path)
    assert resolve_exit_heads("any", 32, [], tmp_path).layers == (4, 8, 12)
    assert resolve_exit_heads("no-such-model", 32, [3], None).layers == (3,)
    assert resolve_exit_heads("no-such-model", 32, [], None) is None
