"""`eespec generate --json-schema FILE | --regex RE | --grammar FILE`, as a user runs it."""

from __future__ import annotations

import json

import pytest

from shared.models import load_model
from shared.tiny import tiny_llama
from tests.helpers import bytelevel_tokenizer, oracle_grammar_greedy
from tests.test_cli import eespec
from tests.test_grammar import EOS, LARK, SCHEMA, VOCAB


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny target and draft with the byte-level tokenizer, saved as HF folders."""
    root = tmp_path_factory.mktemp("grammar-pair")
    tokenizer = bytelevel_tokenizer()
    paths = []
    for name, seed, layers in (("target", 0, 4), ("draft", 1, 1)):
        model = tiny_llama(seed, vocab_size=VOCAB, hidden_size=32, layers=layers)
        model.generation_config.eos_token_id = EOS
        model.config.eos_token_id = EOS
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths.append(str(root / name))
    (root / "schema.json").write_text(json.dumps(SCHEMA))
    (root / "expr.lark").write_text(LARK)
    return paths[0], paths[1], root


@pytest.mark.parametrize("option", ["--json-schema", "--regex", "--grammar"])
def test_generate_local_with_a_grammar_matches_generate(pair, option):
    target, draft, root = pair
    value, grammar = {
        "--json-schema": (str(root / "schema.json"), {"json_schema": SCHEMA}),
        "--regex": ("[a-z]{2,6}@x[.](com|org)", {"regex": "[a-z]{2,6}@x[.](com|org)"}),
        "--grammar": (str(root / "expr.lark"), {"lark": LARK}),
    }[option]
    out = eespec(
        "generate",
        "--local",
        "--target",
        target,
        "--draft",
        draft,
        "--exits",
        "2",
        "--prompt",
        "Hello",
        "--max-tokens",
        "40",
        option,
        value,
        "--json",
    )
    assert out.returncode == 0, out.stderr
    tok = bytelevel_tokenizer()
    model, _ = load_model(target)
    expected = oracle_grammar_greedy(model, tok, grammar, tok("Hello").input_ids, 40)
    assert json.loads(out.stdout)["token_ids"] == expected


def test_grammar_errors_are_clear(pair):
    target, draft, root = pair
    common = ("generate", "--local", "--target", target, "--draft", draft, "--exits", "2", "--prompt", "x")
    bad = eespec(*common, "--regex", "(")
    assert bad.returncode == 2 and "bad_grammar" in bad.stderr and "Traceback" not in bad.stderr
    both = eespec(*common, "--regex", "a", "--grammar", str(root / "expr.lark"))
    assert both.returncode == 2 and "at most one" in both.stderr
