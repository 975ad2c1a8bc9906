"""Structured output in-process: grammar specs, masks, and greedy output equal to the target's own
generate() with the grammar as a logits processor (tests/helpers.py: an independent llguidance oracle)."""

from __future__ import annotations

import ast
import json
import re

import jsonschema
import pytest
import torch

from cloud_server.engine import EarlyExitTarget, EngineLimits, ExitHeads, TargetSession
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from shared.errors import ProtocolError
from shared.grammar import GrammarCompiler, grammar_compiler, parse_grammar
from shared.sampling import SamplingParams
from shared.tiny import tiny_llama
from tests.helpers import PerturbedDraft, bytelevel_tokenizer, oracle_grammar_greedy, twin

EOS = 2
# 4 specials + 95 printable characters + 8 multi-character tokens = 107 ids; the model has 112, so ids
# 107..111 are vocabulary padding the tokenizer does not know.
VOCAB = 112
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["name", "ok"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{1,8}@[a-z]{1,5}\.(com|org)"
LARK = """start: expr
expr: term ((" + " | " - ") term){0,3}
term: NUMBER | "(" NUMBER " * " NUMBER ")"
NUMBER: /[1-9][0-9]{0,2}/
"""
GRAMMARS = {"json_schema": {"json_schema": SCHEMA}, "regex": {"regex": REGEX}, "lark": {"lark": LARK}}
PROMPTS = ["Hello", "Give me JSON:", "x = "]


@pytest.fixture(scope="module")
def tok():
    return bytelevel_tokenizer()


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0, vocab_size=VOCAB, hidden_size=32, layers=4)
    model.generation_config.eos_token_id = EOS
    return model


@pytest.fixture(scope="module")
def unrelated():
    model = tiny_llama(1, vocab_size=VOCAB, hidden_size=32, layers=1)
    model.generation_config.eos_token_id = EOS
    return model


def decoder_for(target, tok, engine: DraftEngine, window: int, exits=(1, 3)) -> SpeculativeDecoder:
    heads = ExitHeads.untrained(exits, target.config.hidden_size).double() if exits else None
    session = TargetSession(
        EarlyExitTarget(target, heads), eos_ids=[EOS], tokenizer=tok, limits=EngineLimits(max_window=16)
    )
    return SpeculativeDecoder(engine, session, window=window)


def parses(kind: str, text: str) -> bool:
    """Whether `text` is a complete sentence of the grammar, checked without llguidance."""
    if kind == "json_schema":
        try:
            jsonschema.validate(json.loads(text), SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if kind == "regex":
        return re.fullmatch(REGEX, text) is not None
    # The Lark grammar is a subset of Python arithmetic with bounded numbers and nesting.
    if re.fullmatch(r"[0-9 +\-*()]+", text) is None:
        return False
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return all(1 <= len(n) <= 3 and n[0] != "0" for n in re.findall(r"[0-9]+", text))


# --- the spec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"regex": "("},
        {"regex": "a{2"},
        {"lark": "start: undefined_rule"},
        {"lark": "start: ("},
        {"json_schema": {"type": "no-such-type"}},
        {"ebnf": "start ::= 'a'"},
        {"regex": "a", "lark": 'start: "a"'},
        {},
        {"json_schema": "not an object"},
        ["regex", "a"],
    ],
)
def test_invalid_or_unsupported_grammar_is_bad_grammar(tok, raw):
    compiler = grammar_compiler(tok, vocab_size=VOCAB, eos_ids=[EOS])
    with pytest.raises(ProtocolError) as info:
        compiler.matcher(parse_grammar(raw))
    assert info.value.code == "bad_grammar"
    assert not info.value.retryable


def test_grammar_over_the_size_limit_is_too_large():
    with pytest.raises(ProtocolError) as info:
        parse_grammar({"regex": "a" * 70_000})
    assert info.value.code == "too_large"
    assert parse_grammar({"regex": "a" * 100}, max_bytes=200) is not None


def test_compiled_grammars_are_cached_per_tokenizer_and_grammar_hash(tok):
    assert grammar_compiler(tok, vocab_size=VOCAB, eos_ids=[EOS]) is grammar_compiler(
        tok, vocab_size=VOCAB, eos_ids=[EOS]
    )
    compiler = GrammarCompiler(tok, vocab_size=VOCAB, eos_ids=[EOS], cache_size=2)
    for _ in range(3):
        compiler.matcher(parse_grammar({"regex": REGEX}))
    # Key order does not change the hash.
    compiler.matcher(parse_grammar({"json_schema": {"type": "object", "required": ["a"]}}))
    compiler.matcher(parse_grammar({"json_schema": {"required": ["a"], "type": "object"}}))
    assert compiler.compiled == 2
    compiler.matcher(parse_grammar({"lark": LARK}))  # evicts the regex (least recently used)
    compiler.matcher(parse_grammar({"regex": REGEX}))
    assert compiler.compiled == 4


# --- masks ----------------------------------------------------------------------------------------------


def test_masks_exclude_padding_and_allow_eos_only_when_complete(tok):
    matcher = grammar_compiler(tok, vocab_size=VOCAB, eos_ids=[EOS]).matcher(parse_grammar({"regex": "ab?"}))
    a, b = tok.convert_tokens_to_ids(["a", "b"])
    first = matcher.allowed()
    assert first.shape == (VOCAB,)
    assert first.nonzero().flatten().tolist() == [a]
    matcher.commit([a])
    assert set(matcher.allowed().nonzero().flatten().tolist()) == {b, EOS}
    matcher.commit([b])
    assert matcher.allowed().nonzero().flatten().tolist() == [EOS]  # complete: only EOS
    matcher.commit([EOS])
    assert matcher.ended
    with pytest.raises(ProtocolError):
        matcher.commit([a])  # nothing follows EOS
    # Rolling back across EOS restores the state before it (llguidance's own rollback over a consumed
    # EOS does not, which is why EOS never reaches it).
    matcher.rollback(2)
    assert set(matcher.allowed().nonzero().flatten().tolist()) == {b, EOS}
    assert not first[len(tok) :].any()  # vocabulary padding is never allowed


def test_mask_for_window_equals_step_by_step_masks_and_leaves_the_matcher(tok):
    compiler = grammar_compiler(tok, vocab_size=VOCAB, eos_ids=[EOS])
    matcher = compiler.matcher(parse_grammar({"regex": REGEX}))
    prefix = tok("abc").input_ids
    matcher.commit(prefix)
    draft = tok("de@x").input_ids
    masks = matcher.mask_for_window(draft)
    assert masks.shape == (len(draft) + 1, VOCAB)
    assert matcher.tokens == prefix
    step = compiler.matcher(parse_grammar({"regex": REGEX}))
    step.commit(prefix)
    for i, token in enumerate(draft):
        assert torch.equal(masks[i], step.allowed())
        step.commit([token])
    assert torch.equal(masks[-1], step.allowed())
    # A forbidden draft token: its row forbids it, the rows after it are never read (all True).
    bad = tok("d9ef").input_ids
    masks = matcher.mask_for_window(bad)
    assert not masks[1, bad[1]]
    assert masks[2:].all()
    assert matcher.tokens == prefix
    # Rollback and sync move the matcher to any legal prefix and report an illegal one.
    assert matcher.sync(tok("ab").input_ids) and matcher.tokens == tok("ab").input_ids
    assert not matcher.sync(tok("ab!x").input_ids)
    assert matcher.tokens == tok("ab").input_ids
    matcher.rollback(2)
    assert matcher.tokens == []


@pytest.mark.parametrize("kind", list(GRAMMARS))
def test_masks_after_any_history_equal_a_fresh_matchers(tok, kind):
    """Random walks of commits, window masks, rollbacks and syncs (illegal tokens and EOS included): the
    matcher's mask always equals that of a fresh matcher fed the same tokens."""
    import random

    compiler = grammar_compiler(tok, vocab_size=VOCAB, eos_ids=[EOS])
    spec = parse_grammar(GRAMMARS[kind])
    matcher = compiler.matcher(spec)
    rng = random.Random(kind)
    for _ in range(300):
        op = rng.random()
        if matcher.ended or op < 0.15:
            matcher.rollback(rng.randint(1 if matcher.ended else 0, len(matcher.tokens)))
        elif op < 0.55:
            matcher.commit([rng.choice(matcher.allowed().nonzero().flatten().tolist())])
        elif op < 0.8:
            window = [
                rng.randrange(VOCAB)
                if rng.random() < 0.2
                else rng.choice(matcher.allowed().nonzero().flatten().tolist())
                for _ in range(rng.randint(1, 6))
            ]
            before = list(matcher.tokens)
            matcher.mask_for_window(window)
            assert matcher.tokens == before
        else:
            other = matcher.fork()
            other.sync(other.tokens[: rng.randint(0, len(other.tokens))] + [rng.randrange(VOCAB)])
            matcher.sync(other.tokens)
        if not matcher.ended:
            fresh = compiler.matcher(spec)
            fresh.commit(matcher.tokens)
            assert torch.equal(fresh.allowed(), matcher.allowed())


# --- greedy exactness in-process ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GRAMMARS))
@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("draft", ["twin", "unrelated", "perturbed", "unconstrained"])
def test_greedy_under_a_grammar_equals_generate_with_the_grammar(target, unrelated, tok, kind, window, draft):
    grammar = GRAMMARS[kind]
    for text in PROMPTS[:2]:
        prompt = tok(text).input_ids
        if draft == "twin":
            engine = DraftEngine(twin(target), tokenizer=tok)
        elif draft == "unrelated":
            engine = DraftEngine(unrelated, tokenizer=tok)
        elif draft == "perturbed":  # forced rejections; the perturbed tokens are mostly illegal too
            positions = {len(prompt) + 2, len(prompt) + 5, len(prompt) + 6}
            engine = PerturbedDraft(twin(target), positions, VOCAB)
            engine.tokenizer = tok
        else:  # no tokenizer: the draft ignores the grammar and the target rejects its illegal tokens
            engine = DraftEngine(twin(target))
        result = decoder_for(target, tok, engine, window).generate(prompt, max_tokens=40, grammar=grammar)
        expected = oracle_grammar_greedy(target, tok, grammar, prompt, 40)
        assert result.token_ids == expected, (kind, text)
        assert result.finish_reason == ("stop" if expected[-1] == EOS else "length")


def test_the_grammar_on_the_draft_raises_acceptance(target, tok):
    """A twin draft with the grammar proposes what the target chooses; without it, what the target would
    choose unconstrained, which the grammar mostly forbids."""
    prompt = tok(PROMPTS[0]).input_ids
    rates = {}
    for constrained in (True, False):
        engine = DraftEngine(twin(target), tokenizer=tok if constrained else None)
        m = decoder_for(target, tok, engine, 4).generate(
            prompt, max_tokens=40, grammar=GRAMMARS["json_schema"]
        )
        rates[constrained] = m.metrics.accepted / m.metrics.drafted
    assert rates[True] > 0.8 > 0.3 > rates[False]


def test_max_tokens_cuts_a_structure_with_finish_reason_length(target, tok):
    prompt = tok(PROMPTS[0]).input_ids
    full = oracle_grammar_greedy(target, tok, GRAMMARS["json_schema"], prompt, 60)
    assert full[-1] == EOS and len(full) > 8
    for max_tokens in (1, 2, 5, 8):
        engine = DraftEngine(twin(target), tokenizer=tok)
        result = decoder_for(target, tok, engine, 4).generate(
            prompt, max_tokens=max_tokens, grammar=GRAMMARS["json_schema"]
        )
        assert result.token_ids == full[:max_tokens]
        assert result.finish_reason == "length"


def test_stop_strings_still_apply_under_a_grammar(target, tok):
    prompt = tok(PROMPTS[0]).input_ids
    full = oracle_grammar_greedy(target, tok, GRAMMARS["regex"], prompt, 40)
    text = tok.decode(full, skip_special_tokens=True)
    stop = text[text.index("@") : text.index("@") + 2]
    engine = DraftEngine(twin(target), tokenizer=tok)
    result = decoder_for(target, tok, engine, 3).generate(
        prompt, max_tokens=40, stop=[stop], grammar=GRAMMARS["regex"]
    )
    assert result.finish_reason == "stop"
    assert stop in tok.decode(result.token_ids) and result.token_ids == full[: len(result.token_ids)]
    assert len(result.token_ids) < len(full)


def test_session_errors_before_any_model_work(target, tok):
    session = TargetSession(EarlyExitTarget(target, None), eos_ids=[EOS], tokenizer=tok)
    calls = []
    session.kv_cache.forward = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    for raw, code in (({"regex": "("}, "bad_grammar"), ({"lark": "x" * 70_000}, "too_large")):
        with pytest.raises(ProtocolError) as info:
            session.start(tok("a").input_ids, SamplingParams(), 8, grammar=raw)
        assert info.value.code == code
    no_eos = TargetSession(EarlyExitTarget(target, None), eos_ids=[], tokenizer=tok)
    with pytest.raises(ProtocolError, match="EOS"):
        no_eos.start(tok("a").input_ids, SamplingParams(), 8, grammar={"regex": "a"})
    assert calls == []


def test_a_restart_continues_the_grammar_from_the_committed_tokens(target, tok):
    """`generated`: the edge restarts a lost generation with its committed tokens as the prompt."""
    grammar = GRAMMARS["lark"]
    prompt = tok(PROMPTS[2]).input_ids
    full = oracle_grammar_greedy(target, tok, grammar, prompt, 30)
    cut = 4
    session = TargetSession(EarlyExitTarget(target, None), eos_ids=[EOS], tokenizer=tok)
    started = session.start([*prompt, *full[:cut]], SamplingParams(), 30, generated=cut, grammar=grammar)
    assert started.first_token == full[cut]
    # Without it the grammar would start again at the committed tokens: another output.
    fresh = TargetSession(EarlyExitTarget(target, None), eos_ids=[EOS], tokenizer=tok)
    assert fresh.start([*prompt, *full[:cut]], SamplingParams(), 30, grammar=grammar).first_token != full[cut]
    with pytest.raises(ProtocolError) as info:
        session.start([*prompt, *tok("))").input_ids], SamplingParams(), 8, generated=2, grammar=grammar)
    assert info.value.code == "bad_grammar"


# --- every output parses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GRAMMARS))
def test_every_output_parses_under_its_grammar(target, unrelated, tok, kind):
    """Many prompts and seeds, greedy and sampled: a finished output is a sentence of the grammar; one cut
    by max_tokens is a prefix of one (the matcher accepts it)."""
    grammar = GRAMMARS[kind]
    compiler = grammar_compiler(tok, vocab_size=VOCAB, eos_ids=[EOS])
    finished = 0
    prompts = [*PROMPTS, "{", "The answer is"]
    settings = [
        SamplingParams(),
        *(
            SamplingParams(temperature=t, top_k=k, seed=s)
            for t, k, s in [(1.0, 0, 1), (0.7, 20, 2), (1.5, 0, 3)]
        ),
    ]
    for text in prompts:
        for sampling in settings:
            engine = DraftEngine(unrelated, tokenizer=tok)
            result = decoder_for(target, tok, engine, 4).generate(
                tok(text).input_ids, max_tokens=48, sampling=sampling, grammar=grammar
            )
            ids = result.token_ids
            assert compiler.matcher(parse_grammar(grammar)).sync(ids), (text, sampling)
            if result.finish_reason == "stop":
                finished += 1
                assert ids[-1] == EOS
                output = tok.decode(ids[:-1])
                assert parses(kind, output), (kind, output)
    assert finished >= len(prompts) * len(settings) // 2, "too few outputs completed for a meaningful test"
