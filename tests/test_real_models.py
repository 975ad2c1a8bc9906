"""Slow: the real SmolLM2-135M-Instruct (pulled once into $EESPEC_HOME) against its own generate()."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from cloud_server.engine.exits import ExitHeads
from cloud_server.engine.loading import eos_ids_of
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.models import load_model
from tests.helpers import build_decoder

pytestmark = pytest.mark.slow

PROMPTS = [
    "def fibonacci(n):",
    "The robot should walk forward two meters, then",
    "Once upon a time, in a small village by the sea,",
]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    target, tokenizer = load_model(DEFAULT_TARGET)
    draft, _ = load_model(DEFAULT_DRAFT)
    return target, draft, tokenizer


def oracle(target, tokenizer, prompt_ids):
    ids = torch.tensor([prompt_ids])
    out = target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=MAX_TOKENS,
        eos_token_id=eos_ids_of(target, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("window", [3, 6])
def test_default_pair_greedy_equals_generate(pair, window):
    target, draft, tokenizer = pair
    decoder = build_decoder(
        target,
        draft,
        window=window,
        heads=ExitHeads.untrained((10, 20), target.config.hidden_size),
        eos=eos_ids_of(target, tokenizer)[0],
    )
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt).input_ids
        assert decoder.generate(prompt_ids, max_tokens=MAX_TOKENS).token_ids == oracle(
            target, tokenizer, prompt_ids
        )


def test_target_as_its_own_draft_accepts_windows_and_stays_exact(pair):
    """Window forwards vs one-token steps in float32 on the real model: accepted windows, same output."""
    target, _, tokenizer = pair
    decoder = build_decoder(
        target, copy.deepcopy(target), window=5, exits=(15,), eos=eos_ids_of(target, tokenizer)[0]
    )
    prompt_ids = tokenizer(PROMPTS[0]).input_ids
    result = decoder.generate(prompt_ids, max_tokens=MAX_TOKENS)
    assert result.token_ids == oracle(target, tokenizer, prompt_ids)
    assert result.metrics.mean_accepted_len >= 4.0


def test_cli_generate_local_json(pair):
    target, _, tokenizer = pair
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "eespec",
            "generate",
            "--local",
            "--prompt",
            PROMPTS[0],
            "--max-tokens",
            "24",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    payload = json.loads(out.stdout)
    prompt_ids = tokenizer(PROMPTS[0]).input_ids
    assert payload["token_ids"] == oracle(target, tokenizer, prompt_ids)[:24]
    assert payload["text"] == tokenizer.decode(payload["token_ids"], skip_special_tokens=True)
    for key in ("rounds", "drafted", "accepted", "mean_accepted_len", "early_predictions", "early_hits"):
        assert key in payload["metrics"]


@pytest.mark.parametrize("preempt", [True, False])
def test_default_pair_over_websockets_equals_generate(pair, preempt):
    """The real server (in a thread, loopback websockets) with the default pair and exits 10, 20."""
    import asyncio

    from edge_client.client import EdgeClient
    from edge_client.draft import DraftEngine
    from tests.servers import running_server, tiny_loaded

    target, draft, tokenizer = pair
    loaded = tiny_loaded(target, tokenizer, exits=(10, 20), name=DEFAULT_TARGET)

    async def run(url):
        outputs = []
        async with EdgeClient(
            url, DraftEngine(draft), tokenizer=tokenizer, api_key="k", preempt=preempt
        ) as client:
            for prompt in PROMPTS:
                result = await client.generate(tokenizer(prompt).input_ids, max_tokens=MAX_TOKENS)
                outputs.append(result.token_ids)
        return outputs

    with running_server(loaded, api_key=["k"]) as url:
        outputs = asyncio.run(run(url))
    loaded.early_exit.close()
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        assert output == oracle(target, tokenizer, tokenizer(prompt).input_ids)
