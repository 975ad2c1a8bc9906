"""`eespec generate --image FILE` as a user runs it: real processes, tiny VLMs saved to disk."""

from __future__ import annotations

import json

import pytest

from eespec.processes import ServerProcess
from shared.models import load_model
from shared.tiny_vlm import save_tiny_vlm_pair
from shared.vlm import image_placeholder_text, load_processor, prompt_with_images
from tests.test_cli import eespec
from tests.vlm_helpers import frame, oracle_vlm_greedy


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory):
    return save_tiny_vlm_pair(tmp_path_factory.mktemp("vlm"), "qwen2_vl")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "frame.png"
    frame(3).save(path)
    return path


def _expected(target: str, image, prompt: str, max_tokens: int) -> list[int]:
    model, _ = load_model(target)
    processor = load_processor(target)
    ids = prompt_with_images(processor, f"{image_placeholder_text(processor, 1)}\n{prompt}", [image])
    return oracle_vlm_greedy(model, processor, ids, [image], max_tokens, eos=2)


def test_generate_local_with_an_image(qwen_pair, image_file):
    from PIL import Image

    target, draft = qwen_pair
    args = ["--target", target, "--draft", draft, "--exits", "2", "--prompt", "go", "--max-tokens", "10"]
    out = eespec("generate", "--local", *args, "--image", str(image_file), "--json")
    assert out.returncode == 0, out.stderr
    expected = _expected(target, Image.open(image_file).convert("RGB"), "go", 10)
    assert json.loads(out.stdout)["token_ids"] == expected
    missing = eespec("generate", "--local", *args, "--image", str(image_file) + ".nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow  # a server process and a client process (torch imports)
def test_generate_against_a_server_with_an_image(qwen_pair, image_file):
    from PIL import Image

    target, draft = qwen_pair
    with ServerProcess(target, exits="1,2") as server:
        out = eespec(
            "generate",
            "--server",
            server.url,
            "--api-key",
            server.api_key,
            "--draft",
            draft,
            "--prompt",
            "go",
            "--max-tokens",
            "10",
            "--image",
            str(image_file),
            "--json",
        )
    assert out.returncode == 0, out.stderr
    expected = _expected(target, Image.open(image_file).convert("RGB"), "go", 10)
    assert json.loads(out.stdout)["token_ids"] == expected
