"""Exit heads are checked against the model they are loaded for (issue 12, item 9): a misfit is refused with
a message that says what differs, instead of serving early verdicts that are noise."""

from __future__ import annotations

import pytest

from cloud_server.engine import ExitConfig, ExitHeads, load_target, model_fingerprint, resolve_exit_heads
from shared.tiny import save_tiny_pair, tiny_llama


def _heads_for(model, layers=(2,)) -> ExitHeads:
    return ExitHeads(
        ExitConfig(
            layers=layers,
            hidden_size=model.config.hidden_size,
            base_model="tiny-a",
            model=model_fingerprint(model),
        )
    )


def test_heads_fit_the_model_they_were_trained_for(tmp_path):
    model = tiny_llama(0, hidden_size=32, layers=4)
    _heads_for(model).save(tmp_path)
    heads = resolve_exit_heads("tiny-a", 32, [2], tmp_path, fingerprint=model_fingerprint(model))
    assert heads is not None and heads.layers == (2,)
    assert ExitHeads.load(tmp_path).config.model == model_fingerprint(model)  # the fingerprint round-trips


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(hidden_size=48), "hidden size 32, the model has 48"),
        (dict(layers=1), "exit layers [2], the model has 1 layers"),
        (dict(vocab_size=80), "vocab_size 64, the model has 80"),
    ],
)
def test_heads_for_another_model_are_refused(tmp_path, other, message):
    _heads_for(tiny_llama(0, hidden_size=32, layers=4)).save(tmp_path)
    model = tiny_llama(1, **({"hidden_size": 32, "layers": 4} | other))
    with pytest.raises(ValueError, match="trained for tiny-a and do not fit") as err:
        resolve_exit_heads("x", model.config.hidden_size, [], tmp_path, fingerprint=model_fingerprint(model))
    assert message in str(err.value)


def test_another_tokenizer_is_refused_even_with_the_same_shape(tmp_path):
    model = tiny_llama(0)
    config = ExitConfig(
        layers=(2,), hidden_size=32, model=model_fingerprint(model) | {"vocab_hash": "0" * 16}
    )
    ExitHeads(config).save(tmp_path)
    fingerprint = model_fingerprint(model) | {"vocab_hash": "f" * 16}
    with pytest.raises(ValueError, match="vocab_hash"):
        resolve_exit_heads("x", 32, [2], tmp_path, fingerprint=fingerprint)


def test_load_target_refuses_misfit_heads(tmp_path):
    """The path the server and `eespec generate` take: heads of a wider model are refused at load time."""
    target_dir, _ = save_tiny_pair(tmp_path / "models")
    _heads_for(tiny_llama(0, hidden_size=48, layers=4)).save(tmp_path / "heads")
    with pytest.raises(ValueError, match="hidden size 48, the model has 32"):
        load_target(target_dir, exit_layers=[2], exits_dir=tmp_path / "heads")


def test_files_without_a_fingerprint_still_load_and_are_shape_checked(tmp_path):
    """Heads saved before the fingerprint existed: hidden size and depth are still checked."""
    ExitHeads(ExitConfig(layers=(6,), hidden_size=32)).save(tmp_path)
    model = tiny_llama(0, hidden_size=32, layers=4)
    with pytest.raises(ValueError, match="exit layers \\[6\\], the model has 4 layers"):
        resolve_exit_heads("x", 32, [], tmp_path, fingerprint=model_fingerprint(model))
