from __future__ import annotations

import os

import pytest

from shared.tiny import tiny_llama

# EESPEC_TEST_DEVICE=cuda runs the engine tests that use these fixtures on a GPU (the device check).
DEVICE = os.environ.get("EESPEC_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def target_model():
    return tiny_llama(0, vocab_size=64, hidden_size=32, layers=4).to(DEVICE)


@pytest.fixture(scope="session")
def unrelated_draft_model():
    return tiny_llama(1, vocab_size=64, hidden_size=32, layers=1).to(DEVICE)
