"""The shipped weights still earn the figures their model cards quote (slow: real models).

`training.card_check` recomputes, on a fixed held-out check set, the draft's and the exits' top-1
agreement, the acceptance per workload and the early-verdict hit rate per exit; the figures must match the
`card_check.json` files beside the weights within noise, and the cards must carry exactly those figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_server.engine.exits import shipped_exit_heads
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.models import resolve_model
from training.card_check import CHECK_FILE, check_section, compare, compute

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders() -> tuple[Path, Path]:
    exits = shipped_exit_heads(DEFAULT_TARGET)
    assert exits is not None, "the default target ships no exit heads"
    return Path(resolve_model(DEFAULT_DRAFT)), Path(exits)


@pytest.fixture(scope="module")
def recomputed(folders) -> dict:
    _, exits = folders
    return compute(DEFAULT_TARGET, DEFAULT_DRAFT, exits)


@pytest.mark.parametrize("which", ["draft", "exits"])
def test_weights_match_their_card_figures(folders, recomputed, which) -> None:
    folder = folders[0] if which == "draft" else folders[1]
    expected = json.loads((folder / CHECK_FILE).read_text())
    assert expected["draft"] == DEFAULT_DRAFT and expected["target"] == DEFAULT_TARGET
    assert compare(expected, recomputed) == []
    assert recomputed["rounds"]["matches_target"]


@pytest.mark.parametrize("which", ["draft", "exits"])
def test_cards_quote_the_check_figures(folders, which) -> None:
    folder = folders[0] if which == "draft" else folders[1]
    figures = json.loads((folder / CHECK_FILE).read_text())
    assert check_section(figures) in (folder / "MODEL_CARD.md").read_text()


def test_draft_card_is_rendered_from_its_records(folders) -> None:
    from training.draft_card import QUALITY_FILE, TRAINING_FILE, render

    draft, _ = folders
    card = render(
        draft,
        json.loads((draft / TRAINING_FILE).read_text()),
        json.loads((draft / QUALITY_FILE).read_text()),
        json.loads((draft / CHECK_FILE).read_text()),
    )
    assert card == (draft / "MODEL_CARD.md").read_text()


def test_shipped_draft_is_fp16_and_within_40_mb(folders) -> None:
    draft, _ = folders
    config = json.loads((draft / "config.json").read_text())
    assert config["dtype"] == "float16"
    assert sum(p.stat().st_size for p in draft.glob("*.safetensors")) <= 40_000_000
