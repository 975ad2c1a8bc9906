"""The command line as a user runs it: real processes, tiny models saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eespec.processes import ServerProcess
from shared.models import load_model
from shared.tiny import save_tiny_pair, tiny_tokenizer
from tests.helpers import oracle_greedy


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("pair"))


def eespec(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eespec", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow  # five process starts (torch imports): a minute on 2 cores
def test_generate_against_a_server_process(pair):
    target, draft = pair
    model, _ = load_model(target)
    prompt = "Hello there"
    expected = oracle_greedy(model, tiny_tokenizer()(prompt).input_ids, 20, eos=2)
    with ServerProcess(target, exits="1,3") as server:
        for extra in ([], ["--no-preempt"], ["--adaptive"], ["--fallback", "continue"]):
            out = eespec(
                "generate",
                "--server",
                server.url,
                "--api-key",
                server.api_key,
                "--draft",
                draft,
                "--prompt",
                prompt,
                "--max-tokens",
                "20",
                "--json",
                *extra,
            )
            assert out.returncode == 0, out.stderr
            payload = json.loads(out.stdout)
            assert payload["token_ids"] == expected, extra
            assert payload["metrics"]["rounds"] >= 1 and "rtt_ms_p50" in payload["metrics"]
        wrong = eespec(
            "generate", "--server", server.url, "--api-key", "nope", "--draft", draft, "--prompt", "x"
        )
        assert wrong.returncode == 2 and "403" in wrong.stderr


def test_generate_local_matches_generate(pair):
    target, draft = pair
    model, _ = load_model(target)
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
        "abc",
        "--max-tokens",
        "12",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["token_ids"] == oracle_greedy(
        model, tiny_tokenizer()("abc").input_ids, 12, eos=2
    )


def test_clear_errors(pair):
    target, draft = pair
    unknown = eespec("generate", "--local", "--target", "no-such-model", "--prompt", "x")
    assert unknown.returncode == 2 and "error" in unknown.stderr and "Traceback" not in unknown.stderr
    both = eespec("generate", "--local", "--server", "ws://x", "--prompt", "x")
    assert both.returncode == 2 and "exactly one" in both.stderr
    unreachable = eespec("generate", "--server", "ws://127.0.0.1:9", "--draft", draft, "--prompt", "x")
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr


def test_models_list_json():
    out = eespec("models", "list", "--json")
    rows = json.loads(out.stdout)
    assert {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"} <= {r["name"] for r in rows}
    assert all("path" in r for r in rows)


def test_train_draft_help_lists_its_options():
    out = eespec("train-draft", "--help")
    assert out.returncode == 0, out.stderr
    for option in ("--target", "--out", "--steps", "--hidden", "--resume", "--time-budget"):
        assert option in out.stdout
    missing = eespec("train-draft")
    assert missing.returncode == 2 and "--out" in missing.stderr
