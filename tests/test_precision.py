"""Served precision: bfloat16 / int8 weight-only loading, row-wise attention, and exactness in that precision.

The exactness reference is the served model in the served precision: its own `generate()`. What makes
bfloat16 exact is that a window forward gives bit-identical logits to one-token steps (shared.attention);
the fast tests show it on tiny models, the slow ones on the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import pytest
import torch

from cloud_server.engine import load_target
from cloud_server.settings import ServerSettings
from shared.attention import ROWWISE_ATTENTION, ROWWISE_MAX_QUERIES, refill_pieces
from shared.kv import CachedLM
from shared.precision import (
    Int8WeightLinear,
    RowStableLinear,
    apply_precision,
    check_precision,
    make_linears_row_stable,
)
from shared.tiny import save_tiny_pair, tiny_llama
from tests.helpers import build_decoder, oracle_greedy, twin


def _window_vs_steps(model, sequence: list[int], start: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    window_cache = CachedLM(model)
    window_cache.forward(sequence[:start])
    window = window_cache.forward(sequence[start : start + k], keep=k)
    step_cache = CachedLM(model)
    step_cache.forward(sequence[:start])
    steps = torch.cat([step_cache.forward([t]) for t in sequence[start : start + k]])
    return window, steps


def test_int8_linear_rows_are_independent_and_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    q = Int8WeightLinear(linear)
    x = torch.randn(5, 64).bfloat16()
    together = q(x)
    one_by_one = torch.cat([q(x[i : i + 1]) for i in range(5)])
    assert together.dtype == torch.bfloat16
    assert torch.equal(together, one_by_one)
    reference = x.float() @ linear.weight.detach().T + linear.bias.detach()
    assert (together.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_bf16_linear_rows_do_not_depend_on_the_row_count():
    """SmolLM2's MLP down-projection shape, in bf16: each row of a 2..40-row product has the bits of the same
    row fed alone. A plain `nn.Linear` fails this on some CPUs (a one-row product takes a GEMV)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(1536, 576, bias=False).bfloat16()
    state = {k: v.clone() for k, v in linear.state_dict().items()}
    model = torch.nn.Sequential(linear)
    assert make_linears_row_stable(model) == 1 and isinstance(linear, RowStableLinear)
    assert all(torch.equal(state[k], v) for k, v in linear.state_dict().items())
    for _ in range(10):
        x = torch.randn(1, 40, 1536).bfloat16()
        alone = torch.cat([linear(x[:, i : i + 1]) for i in range(40)], dim=1)
        assert alone.shape == (1, 40, 576)
        for rows in (2, 3, 5, 17, 33, 40):
            assert torch.equal(linear(x[:, :rows]), alone[:, :rows]), rows
    model = apply_precision(tiny_llama(0, vocab_size=64, hidden_size=32, layers=2), "bfloat16")
    assert all(type(m) is not torch.nn.Linear for m in model.modules())


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_window_logits_equal_one_token_steps_bit_for_bit(precision):
    model = apply_precision(tiny_llama(0, vocab_size=64, hidden_size=32, layers=4), precision)
    assert model.config._attn_implementation == ROWWISE_ATTENTION
    if precision == "int8":
        assert any(isinstance(m, Int8WeightLinear) for m in model.modules())
    sequence = [int(t) for t in torch.randint(0, 64, (60,), generator=torch.Generator().manual_seed(1))]
    for start in (3, 10, 25, 40):
        for k in (2, 5, 9):
            window, steps = _window_vs_steps(model, sequence, start, k)
            assert torch.equal(window, steps), (start, k)


def test_plain_sdpa_is_what_breaks_it():
    """Control: without row-wise attention the same bf16 comparison differs somewhere (else the test above
    would prove nothing about shared.attention)."""
    model = tiny_llama(0, vocab_size=64, hidden_size=32, layers=4).to(torch.bfloat16)
    model.set_attn_implementation("sdpa")
    sequence = [int(t) for t in torch.randint(0, 64, (60,), generator=torch.Generator().manual_seed(1))]
    same = [
        torch.equal(*_window_vs_steps(model, sequence, start, k))
        for start in (3, 10, 25, 40)
        for k in (2, 5, 9)
    ]
    assert not all(same)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_greedy_speculation_equals_generate_in_that_precision(precision, unrelated_draft_model):
    target = apply_precision(tiny_llama(0, vocab_size=64, hidden_size=32, layers=4), precision)
    for draft in (twin(target), unrelated_draft_model):
        decoder = build_decoder(target, draft, window=4, exits=(2,))
        for prompt in ([0, 5, 7, 9], [0, 3, 3, 3, 40, 41, 2]):
            assert decoder.generate(prompt, max_tokens=30).token_ids == oracle_greedy(target, prompt, 30)


def test_refill_pieces_rebuild_the_generation_cache():
    ids = list(range(100))
    pieces = refill_pieces(ids, prompt_len=40)
    assert pieces[0] == ids[:40] and all(len(p) <= ROWWISE_MAX_QUERIES for p in pieces[1:])
    assert [t for p in pieces for t in p] == ids
    assert refill_pieces(ids[:10], prompt_len=10) == [ids[:10]]


def test_load_target_in_each_precision(tmp_path):
    target_dir, _ = save_tiny_pair(tmp_path)
    for precision, dtype in (
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("int8", torch.bfloat16),
    ):
        loaded = load_target(target_dir, exit_layers=[1], dtype=precision)
        assert loaded.model.dtype == dtype
        heads = loaded.early_exit.heads
        assert heads is not None and next(heads.parameters()).dtype == dtype
        assert any(isinstance(m, Int8WeightLinear) for m in loaded.model.modules()) == (precision == "int8")
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("int4")
    with pytest.raises(ValueError):
        ServerSettings(dtype="int4")
    assert ServerSettings(dtype="bfloat16").dtype == "bfloat16"


# -- the real model -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_real_model_windows_equal_steps_and_generate(precision):
    """SmolLM2-135M-Instruct in `precision`: window logits equal one-token steps bit for bit along a real
    generation, and greedy speculation with the shipped draft and the deployed exit equals the model's
    own generate() in that precision on every workload."""
    from eespec.local import LocalPipeline
    from shared.defaults import DEFAULT_DRAFT, DEFAULT_EXIT_LAYERS, DEFAULT_TARGET
    from shared.workloads import load_workload

    torch.set_num_threads(1)
    pipeline = LocalPipeline.load(
        DEFAULT_TARGET, DEFAULT_DRAFT, exit_layers=DEFAULT_EXIT_LAYERS, dtype=precision
    )
    model = pipeline.target_model
    assert model.config._attn_implementation == ROWWISE_ATTENTION
    eos = sorted(pipeline.session.eos_ids)
    mismatched = []
    for name in ("code", "prose", "robot"):
        workload = load_workload(name)
        for prompt in workload.prompts[:2]:
            ids = workload.encode(pipeline.tokenizer, prompt)
            reference = oracle_greedy(model, ids, 32, eos=eos[0] if eos else None)
            result = pipeline.decoder.generate(ids, max_tokens=32)
            if result.token_ids != reference:
                mismatched.append((name, prompt))
            if name == "code":
                sequence = ids + reference
                for start in range(len(ids), len(sequence) - 5, 7):
                    window, steps = _window_vs_steps(model, sequence, start, 5)
                    assert torch.equal(window, steps), (precision, start)
    assert not mismatched
