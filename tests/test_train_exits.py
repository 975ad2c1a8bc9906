"""`eespec train-exits`: exit heads learn, resume exactly, load into the early-exit target, and never see
the benchmark workload prompts."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from cloud_server.engine.early_exit import EarlyExitTarget
from cloud_server.engine.exits import ExitHeads, exit_logits
from shared.tiny import TINY_VOCAB, tiny_llama, tiny_tokenizer
from training.cli import build_parser
from training.corpus import Corpus, TextFile, build_corpus, prompt_pattern, workload_prompts
from training.exits import train_exits

SENTENCES = (
    "the robot walks slowly to the door",
    "an old keeper reads by the light of the sea",
    "then it turns left and runs quickly down the hall",
    "the village road follows the river past a stone house",
    "in winter the garden is dark before the morning",
    "she writes a letter because the city is quiet at night",
)
LAYERS = (1, 2, 3)


def write_texts(directory: Path, count: int = 12, chars: int = 2500, seed: int = 0) -> list[TextFile]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        parts: list[str] = []
        while sum(len(p) + 2 for p in parts) < chars:
            parts.append(rng.choice(SENTENCES))
        path = directory / f"doc{i:02d}.txt"
        path.write_text(". ".join(parts) + ".\n")
        files.append(TextFile(f"tiny/{path.name}", path))
    return files


@pytest.fixture
def tiny_setup(tmp_path: Path) -> tuple[torch.nn.Module, object, Corpus]:
    tokenizer = tiny_tokenizer()
    corpus = build_corpus(
        tokenizer,
        files=write_texts(tmp_path / "texts"),
        seq_len=32,
        heldout_fraction=0.2,
        prompts=[],
        cache_dir=tmp_path / "corpora",
    )
    model = tiny_llama(0, vocab_size=TINY_VOCAB, hidden_size=32, layers=4, dtype=torch.float32)
    return model, tokenizer, corpus


def _train(tiny_setup, out: Path, **kwargs) -> dict:
    model, tokenizer, corpus = tiny_setup
    options = {
        "steps": 40,
        "batch": 8,
        "seq_len": 32,
        "lr": 1e-2,
        "warmup": 2,
        "eval_every": 0,
        "eval_blocks": 16,
        "progress": False,
        "threads": 1,
        "model_and_tokenizer": (model, tokenizer),
        "corpus": corpus,
    } | kwargs
    return train_exits("tiny", LAYERS, out, **options)


@pytest.mark.parametrize("loss", ["kl", "topk_kl"])
def test_loss_falls_and_heldout_agreement_rises(tiny_setup, tmp_path: Path, loss: str) -> None:
    metrics = _train(tiny_setup, tmp_path / "out", loss=loss, topk=4, negatives=8)
    curve = [point["loss"] for point in metrics["loss_curve"]]
    assert len(curve) == 40
    assert sum(curve[-5:]) / 5 < 0.85 * sum(curve[:5]) / 5
    before = metrics["baseline_zero_adapter"]["top1"]
    after = metrics["agreement_top1"]
    assert sum(after.values()) > sum(before.values()) + 0.1
    assert all(after[str(layer)] >= before[str(layer)] for layer in LAYERS)
    assert metrics["tokens_seen"] == 40 * 8 * 32 and metrics["complete"]


def test_stopped_and_resumed_run_matches_uninterrupted_run(tiny_setup, tmp_path: Path) -> None:
    common = {"steps": 12, "loss": "topk_kl", "topk": 4, "negatives": 8, "checkpoint_every": 5}
    _train(tiny_setup, tmp_path / "straight", **common)
    partial = _train(tiny_setup, tmp_path / "resumed", stop_at=7, **common)
    assert partial["steps"] == 7 and not partial["complete"]
    assert not (tmp_path / "resumed" / "exits.json").exists()
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    resumed = _train(tiny_setup, tmp_path / "resumed", **common)
    assert resumed["steps"] == 12 and resumed["tokens_seen"] == 12 * 8 * 32

    straight_heads = ExitHeads.load(tmp_path / "straight")
    resumed_heads = ExitHeads.load(tmp_path / "resumed")
    a, b = straight_heads.state_dict(), resumed_heads.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for v in a.values())  # it did train

    with pytest.raises(ValueError, match="other settings"):
        _train(tiny_setup, tmp_path / "resumed", **(common | {"lr": 5e-3}))


def test_saved_heads_load_into_the_early_exit_target(tiny_setup, tmp_path: Path) -> None:
    _train(tiny_setup, tmp_path / "out", steps=5)
    heads = ExitHeads.load(tmp_path / "out")
    assert heads.layers == LAYERS and heads.config.base_model == "tiny"
    assert all(v.dtype == torch.float32 for v in heads.state_dict().values())
    metrics_text = (tmp_path / "out" / "metrics.json").read_text()
    assert '"agreement_top1"' in metrics_text

    model = tiny_llama(0, vocab_size=TINY_VOCAB, hidden_size=32, layers=4, dtype=torch.float32)
    target = EarlyExitTarget(model, heads)
    seen: dict[int, torch.Tensor] = {}
    target.forward(
        target.new_kv_cache(), [5, 9, 11, 20], keep=2, on_exit=lambda L, lg, _ms: seen.update({L: lg})
    )
    assert sorted(seen) == list(LAYERS)
    hidden = model(torch.tensor([[5, 9, 11, 20]]), output_hidden_states=True).hidden_states
    with torch.no_grad():
        expected = exit_logits(hidden[2][0, -2:], heads.adapter(2), model.model.norm, model.lm_head)
    torch.testing.assert_close(seen[2], expected)
    target.close()


def test_workload_prompts_are_excluded_from_the_corpus(tmp_path: Path) -> None:
    prompts = workload_prompts()
    assert len(prompts) >= 36  # three workloads of 12 prompts, plus the robot system prompt
    files = write_texts(tmp_path / "texts", count=6, chars=3000, seed=1)
    code_prompt, prose_prompt = prompts[1], next(p for p in prompts if p.startswith("Once upon"))
    # Plant a workload prompt verbatim and a re-indented copy of another into two files.
    files[0].path.write_text(
        files[0].path.read_text()[:1500] + code_prompt + files[0].path.read_text()[1500:]
    )
    reflowed = "    ".join(prose_prompt.split(" "))
    files[3].path.write_text(files[3].path.read_text()[:900] + reflowed + files[3].path.read_text()[900:])

    tokenizer = tiny_tokenizer()
    corpus = build_corpus(
        tokenizer, files=files, seq_len=32, heldout_fraction=0.3, cache_dir=tmp_path / "corpora"
    )
    assert corpus.info["prompt_occurrences"] == 2
    assert sum(corpus.info["blocks_dropped_for_prompts"].values()) >= 2
    pattern = prompt_pattern(prompts)
    assert pattern is not None
    for split in (corpus.train, corpus.heldout):
        for text in tokenizer.batch_decode(split.astype("int64").tolist()):
            assert pattern.search(text) is None
    # The planted prompts' surroundings survive: only overlapping blocks go.
    kept = sum(len(s) for s in (corpus.train, corpus.heldout))
    assert kept >= (6 * 3000) // 32 - 8

    again = build_corpus(
        tokenizer, files=files, seq_len=32, heldout_fraction=0.3, cache_dir=tmp_path / "corpora"
    )
    assert (again.train == corpus.train).all() and again.info == corpus.info
    assert len(list((tmp_path / "corpora").glob("*.npz"))) == 1
    assert re.fullmatch(r"[0-9a-f]{16}", corpus.info["key"])


def test_cli_arguments_parse() -> None:
    args = build_parser().parse_args(
        ["--target", "smollm2-135m-instruct", "--layers", "8,15,20,24", "--steps", "7", "--out", "x"]
    )
    assert args.layers == (8, 15, 20, 24) and args.steps == 7 and args.resume and args.loss == "topk_kl"
    assert not build_parser().parse_args(["--out", "x", "--no-resume"]).resume
