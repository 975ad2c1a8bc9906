"""Slow: structured output on the default pair (SmolLM2-135M-Instruct + the shipped draft) equals the
target's own generate() with the grammar as a logits processor — JSON schema, regex and Lark; in-process
and over a real websocket."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest
import torch
from transformers import LogitsProcessorList

from cloud_server.engine import EarlyExitTarget, EngineLimits, ExitHeads, LoadedTarget, TargetSession
from cloud_server.engine.loading import eos_ids_of
from edge_client.client import EdgeClient
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from eespec.bench.scripts.grammar_acceptance import GRAMMARS, ROBOT_SCHEMA
from eespec.local import encode_prompt
from shared.defaults import DEFAULT_DRAFT, DEFAULT_TARGET
from shared.models import load_model
from tests.helpers import GrammarLogitsProcessor
from tests.servers import running_server

pytestmark = pytest.mark.slow
MAX_TOKENS = 48
PROMPT = "Answer in JSON. The robot should drive 2 metres to the red box."


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    target, tokenizer = load_model(DEFAULT_TARGET)
    draft, _ = load_model(DEFAULT_DRAFT)
    return target, draft, tokenizer


def oracle(target, tokenizer, grammar, prompt_ids):
    eos = eos_ids_of(target, tokenizer)
    processor = GrammarLogitsProcessor(tokenizer, grammar, len(prompt_ids), target.config.vocab_size, eos)
    ids = torch.tensor([prompt_ids])
    out = target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=MAX_TOKENS,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        logits_processor=LogitsProcessorList([processor]),
    )
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("kind", list(GRAMMARS))
def test_default_pair_under_a_grammar_equals_generate(pair, kind):
    target, draft, tokenizer = pair
    eos = eos_ids_of(target, tokenizer)
    heads = ExitHeads.untrained((10, 20), target.config.hidden_size)
    session = TargetSession(
        EarlyExitTarget(target, heads), eos_ids=eos, tokenizer=tokenizer, limits=EngineLimits(max_window=16)
    )
    decoder = SpeculativeDecoder(DraftEngine(draft, tokenizer=tokenizer), session, window=4)
    ids = encode_prompt(tokenizer, PROMPT, chat=True)
    result = decoder.generate(ids, max_tokens=MAX_TOKENS, grammar=GRAMMARS[kind])
    expected = oracle(target, tokenizer, GRAMMARS[kind], ids)
    assert result.token_ids == expected
    text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
    print(f"{kind}: {text!r} acceptance {result.metrics.accepted}/{result.metrics.drafted}")
    if kind == "json_schema" and result.finish_reason == "stop":
        jsonschema.validate(json.loads(text), ROBOT_SCHEMA)


def test_default_pair_json_schema_over_websockets(pair):
    target, draft, tokenizer = pair
    loaded = LoadedTarget.build(DEFAULT_TARGET, target, tokenizer, ExitHeads.untrained((20,), 576))
    ids = encode_prompt(tokenizer, PROMPT, chat=True)
    grammar = {"json_schema": ROBOT_SCHEMA}
    with running_server(loaded, api_key=["k"]) as url:

        async def main():
            engine = DraftEngine(draft)
            async with EdgeClient(url, engine, tokenizer=tokenizer, api_key="k") as client:
                return await client.generate(ids, max_tokens=MAX_TOKENS, grammar=grammar)

        result = asyncio.run(main())
    assert result.token_ids == oracle(target, tokenizer, grammar, ids)
