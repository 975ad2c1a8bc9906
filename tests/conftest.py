from __future__ import annotations

import pytest

from shared.tiny import tiny_llama


@pytest.fixture(scope="session")
def target_model():
    return tiny_llama(0, vocab_size=64, hidden_size=32, layers=4)


@pytest.fixture(scope="session")
def unrelated_draft_model():
    return tiny_llama(1, vocab_size=64, hidden_size=32, layers=1)
