"""`eespec train-draft`: prompts avoid the workloads, the generated set is cached, the student learns from
the teacher, a stopped run resumes to the same weights, and the export loads through transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.tiny import TINY_VOCAB, tiny_llama, tiny_tokenizer
from tests.test_train_exits import write_texts
from training.cli import build_draft_parser
from training.corpus import build_corpus, contains_prompt, prompt_pattern, workload_prompts
from training.draft import DraftSettings, distill, distill_loss, projected_embedding
from training.draft_data import generate_set
from training.draft_prompts import GenPrompt, build_prompts


def test_prompts_mix_kinds_never_contain_a_workload_prompt_and_are_seeded() -> None:
    prompts = build_prompts(60, seed=3)
    assert {p.kind for p in prompts} == {"code", "prose", "robot"}
    assert all(p.chat for p in prompts if p.kind == "robot")
    pattern = prompt_pattern(workload_prompts())
    assert not any(contains_prompt(p.text, pattern) for p in prompts)
    assert [p.text for p in build_prompts(60, seed=3)] == [p.text for p in prompts]
    assert [p.text for p in build_prompts(60, seed=4)] != [p.text for p in prompts]


def test_distill_loss_is_zero_kl_when_the_student_is_the_teacher() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 50)
    mask = torch.ones(2, 5)
    loss, parts = distill_loss(logits, logits, mask, ce_weight=0.0, topk=8)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6) and parts["agree"] == 1.0
    other = torch.randn(2, 5, 50)
    worse, _ = distill_loss(other, logits, mask, ce_weight=0.0, topk=8)
    assert worse > loss
    # Masked positions do not count.
    half = mask.clone()
    half[:, 3:] = 0
    mixed = torch.cat([logits[:, :3], other[:, 3:]], dim=1)
    _, parts = distill_loss(mixed, logits, half, ce_weight=0.0, topk=8)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)


def test_projected_embedding_keeps_the_top_directions() -> None:
    torch.manual_seed(0)
    low_rank = torch.randn(40, 3) @ torch.randn(3, 12)
    projected = projected_embedding(low_rank, 3)
    assert projected.shape == (40, 3)
    # A rank-3 matrix loses nothing: inner products (the tied head's logits) are preserved.
    assert torch.allclose(projected @ projected.T, low_rank @ low_rank.T, atol=1e-3)


@pytest.fixture
def tiny_run(tmp_path: Path):
    tokenizer = tiny_tokenizer()
    corpus = build_corpus(
        tokenizer,
        files=write_texts(tmp_path / "texts"),
        seq_len=16,
        heldout_fraction=0.2,
        prompts=[],
        cache_dir=tmp_path / "corpora",
    )
    teacher = tiny_llama(0, vocab_size=TINY_VOCAB, hidden_size=32, layers=3, dtype=torch.float32)
    teacher.generation_config.eos_token_id = 2
    prompts = [GenPrompt("prose", t) for t in ("the robot", "an old keeper", "the village", "in winter")] * 3
    gen = generate_set(
        teacher, tokenizer, prompts, max_new_tokens=12, batch=4, cache_dir=tmp_path / "gen", progress=False
    )
    settings = DraftSettings(
        target="tiny",
        hidden=16,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate=32,
        steps=40,
        batch=4,
        seq_len=32,
        lr=1e-2,
        warmup=2,
    )
    return teacher, tokenizer, corpus, gen, settings


def test_generated_set_is_cached_and_reloaded_without_generating(tiny_run, tmp_path: Path) -> None:
    teacher, tokenizer, _, gen, _ = tiny_run
    assert len(gen) == 12 and {len(s) for s in gen.sequences} != {0}
    prompts = [GenPrompt("prose", t) for t in ("the robot", "an old keeper", "the village", "in winter")] * 3

    def refuse(*args, **kwargs):
        raise AssertionError("generate() called although the set is cached")

    teacher.generate = refuse
    again = generate_set(
        teacher, tokenizer, prompts, max_new_tokens=12, batch=4, cache_dir=tmp_path / "gen", progress=False
    )
    assert all(np.array_equal(a, b) for a, b in zip(again.sequences, gen.sequences, strict=True))


def test_student_learns_resumes_exactly_and_exports_fp16(tiny_run, tmp_path: Path) -> None:
    teacher, tokenizer, corpus, gen, settings = tiny_run
    kwargs = dict(progress=False, eval_every=20, eval_batches=2, checkpoint_every=5)
    whole = distill(teacher, tokenizer, corpus, gen, settings, tmp_path / "whole", **kwargs)
    assert whole["finished"] and whole["steps"] == 40
    assert whole["history"][0]["step"] == 0  # the untrained student, scored before the first step
    first, last = whole["history"][0]["agreement_top1"], whole["agreement_top1_heldout"]
    assert sum(last.values()) > sum(first.values())

    stopped = distill(teacher, tokenizer, corpus, gen, settings, tmp_path / "resumed", stop_at=15, **kwargs)
    assert stopped == {"steps": 15, "finished": False}
    resumed = distill(teacher, tokenizer, corpus, gen, settings, tmp_path / "resumed", **kwargs)
    assert resumed["agreement_top1_heldout"] == whole["agreement_top1_heldout"]

    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "model")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "model")
    assert next(a.parameters()).dtype == torch.float16
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert (tmp_path / "whole" / "model" / "tokenizer_config.json").is_file()


def test_resume_refuses_a_checkpoint_with_other_settings(tiny_run, tmp_path: Path) -> None:
    teacher, tokenizer, corpus, gen, settings = tiny_run
    distill(teacher, tokenizer, corpus, gen, settings, tmp_path / "run", stop_at=5, progress=False)
    other = DraftSettings(**{**settings.__dict__, "lr": 5e-3})
    with pytest.raises(SystemExit, match="different settings"):
        distill(teacher, tokenizer, corpus, gen, other, tmp_path / "run", progress=False)


def test_cli_parser_defaults_match_the_settings() -> None:
    args = build_draft_parser().parse_args(["--out", "x"])
    defaults = DraftSettings(target=args.target)
    for field in ("hidden", "layers", "steps", "batch", "seq_len", "lr", "ce_weight", "prompts"):
        assert getattr(args, field) == getattr(defaults, field)
