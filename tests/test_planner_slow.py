"""Slow: the planner pair (smollm2-135m-planner + smollm2-135m-planner-draft, built from the pulled bases and
the shipped adapters) through the speculative decoder, plan grammar on, equals the planner target's own
generate() with the grammar as a logits processor; and what it writes for a shipped task is a plan."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LogitsProcessorList

from cloud_server.engine import eos_ids_of
from eespec.local import LocalPipeline, encode_prompt
from eespec.robot_cli import planner_options
from robot import PLAN_SCHEMA, parse_plan, shipped_tasks
from shared.defaults import PAIRS
from tests.helpers import GrammarLogitsProcessor
from training.planner_data import rollout

pytestmark = pytest.mark.slow
GRAMMAR = {"json_schema": PLAN_SCHEMA}


def test_planner_pair_under_the_plan_grammar_equals_the_targets_generate():
    torch.set_num_threads(1)
    pair = PAIRS["planner"]
    pipeline = LocalPipeline.load(pair.target, pair.draft, exit_layers=pair.exits, window=4)
    tok, target = pipeline.tokenizer, pipeline.target_model
    max_tokens = planner_options(pair.target)["max_tokens"]
    task = shipped_tasks()[0]
    _, prompt, _ = next(rollout(task, random.Random(0)))  # the exact prompt the robot's planner sends
    ids = encode_prompt(tok, prompt, chat=True)
    pipeline.decoder.draft_engine.tokenizer = tok
    result = pipeline.decoder.generate(ids, max_tokens=max_tokens, grammar=GRAMMAR)

    eos = eos_ids_of(target, tok)
    processor = GrammarLogitsProcessor(tok, GRAMMAR, len(ids), target.config.vocab_size, eos)
    prompt_ids = torch.tensor([ids])
    out = target.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        do_sample=False,
        max_new_tokens=max_tokens,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        logits_processor=LogitsProcessorList([processor]),
    )
    assert result.token_ids == out[0, len(ids) :].tolist()
    text = tok.decode(result.token_ids, skip_special_tokens=True)
    m = result.metrics
    print(f"{text!r}: accepted {m.accepted}/{m.drafted}, mean accepted length {m.mean_accepted_len}")
    assert parse_plan(text)  # a plan: the grammar closed it within the budget
