"""VLMs over real websockets on loopback: `start.images` exactness, resume with images, bad images."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from websockets.sync.client import connect

from cloud_server.engine import ExitHeads, LoadedTarget
from edge_client.client import EdgeClient
from edge_client.draft import DraftEngine
from shared.hashing import ids_hash
from shared.images import payload_from_image
from shared.tiny_vlm import EOS_ID, FAMILIES, tiny_vlm
from shared.vlm import text_config
from tests.servers import running_server
from tests.vlm_helpers import frame, image_prompt, oracle_vlm_greedy

KEY = "test-key"
# The served tiny VLMs stop at the tokenizer's EOS ("</s>"), so the oracle does too.
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module", params=FAMILIES)
def vlm_server(request):
    target, processor = tiny_vlm(request.param, seed=0, layers=3)
    heads = ExitHeads.untrained((1, 2), text_config(target.config).hidden_size).to(target.dtype)
    loaded = LoadedTarget.build(request.param, target, processor.tokenizer, heads, processor)
    with running_server(loaded, api_key=[KEY], max_image_bytes=4096, max_images=2) as url:
        yield request.param, url, target, processor


def _ws(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/speculate"


def _handshake(ws) -> dict:
    ws.send(json.dumps({"type": "hello", "protocol": 1}))
    return json.loads(ws.recv())


def test_greedy_with_images_over_websockets_equals_generate(vlm_server):
    family, url, target, processor = vlm_server
    draft, _ = tiny_vlm(family, seed=1, layers=1)
    engine = DraftEngine(draft, processor=processor)

    async def go(prompt, images):
        async with EdgeClient(url, engine, api_key=KEY, window=3) as client:
            return await client.generate(prompt, max_tokens=14, images=images)

    for images in ([frame(0)], [frame(1), frame(2, (16, 16))]):
        prompt = image_prompt(processor, images)
        result = asyncio.run(go(prompt, images))
        assert result.token_ids == oracle_vlm_greedy(target, processor, prompt, images, 14, eos=EOS_ID), (
            family
        )
        assert result.metrics.rounds >= 1


def test_resume_with_images_continues_exactly(vlm_server):
    """Disconnect mid-generation: the record keeps the images, `resume` re-prefills them."""
    family, url, target, processor = vlm_server
    images = [frame(4)]
    prompt = image_prompt(processor, images)
    expected = oracle_vlm_greedy(target, processor, prompt, images, 8, eos=EOS_ID)
    with connect(_ws(url), additional_headers=AUTH) as ws:
        session_id = _handshake(ws)["session_id"]
        payload = payload_from_image(images[0]).model_dump()
        ws.send(json.dumps({"type": "start", "token_ids": prompt, "max_tokens": 8, "images": [payload]}))
        started = json.loads(ws.recv())
        assert started["type"] == "started" and started["first_token"] == expected[0]
    committed = [*prompt, expected[0]]
    with connect(_ws(url), additional_headers=AUTH) as ws:
        _handshake(ws)
        ws.send(
            json.dumps(
                {
                    "type": "resume",
                    "session_id": session_id,
                    "committed_len": len(committed),
                    "committed_hash": ids_hash(committed),
                }
            )
        )
        resumed = json.loads(ws.recv())
        assert resumed["type"] == "resumed", resumed
        # A draft of the oracle's next tokens is fully accepted: the resumed cache holds the image.
        draft = {"type": "draft", "round": resumed["round"], "pos": len(committed), "tokens": expected[1:4]}
        ws.send(json.dumps(draft))
        while (verdict := json.loads(ws.recv()))["type"] == "early":
            pass
        assert verdict["type"] == "verdict" and verdict["accepted"] == 3
        assert verdict["token"] == expected[4]


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_bad_images_answer_with_their_codes_and_the_server_stays_up(vlm_server):
    family, url, target, processor = vlm_server
    images = [frame(0)]
    prompt = image_prompt(processor, images)
    png = _png_bytes(images[0])
    jpeg = io.BytesIO()
    images[0].save(jpeg, format="JPEG")
    big = _png_bytes(frame(9, (64, 64)))  # > max_image_bytes (4096) as PNG of noise
    assert len(big) > 4096
    cases = {
        "truncated": ([{"mime": "image/png", "data": _b64(png[: len(png) // 2])}], "bad_image"),
        "not base64": ([{"mime": "image/png", "data": "%%%not-base64%%%"}], "bad_image"),
        "not an image": ([{"mime": "image/png", "data": _b64(b"GIF89a" + b"\0" * 40)}], "bad_image"),
        "wrong type": ([{"mime": "image/gif", "data": _b64(png)}], "bad_image"),
        "declared png, is jpeg": ([{"mime": "image/png", "data": _b64(jpeg.getvalue())}], "bad_image"),
        "oversized": ([{"mime": "image/png", "data": _b64(big)}], "too_large"),
        "too many": ([{"mime": "image/png", "data": _b64(png)}] * 3, "limit_exceeded"),
        "placeholders": ([{"mime": "image/png", "data": _b64(png)}] * 2, "bad_image"),
        "data URL ok but mismatch": ([{"data": "data:image/png;base64," + _b64(png)}] * 2, "bad_image"),
    }
    with connect(_ws(url), additional_headers=AUTH) as ws:
        _handshake(ws)
        for name, (payloads, code) in cases.items():
            ws.send(json.dumps({"type": "start", "token_ids": prompt, "max_tokens": 4, "images": payloads}))
            reply = json.loads(ws.recv())
            assert (reply["type"], reply.get("code")) == ("error", code), (name, reply)
            assert reply["retryable"] is False, name  # the same frame would fail again
            assert "Traceback" not in reply["message"] and "/" not in reply["message"].replace("image/", "")
        # The same socket then generates with a good image (a data: URL), exactly.
        good = [{"mime": "image/png", "data": "data:image/png;base64," + _b64(png)}]
        ws.send(json.dumps({"type": "start", "token_ids": prompt, "max_tokens": 4, "images": good}))
        started = json.loads(ws.recv())
        assert started["type"] == "started"
        assert (
            started["first_token"] == oracle_vlm_greedy(target, processor, prompt, images, 1, eos=EOS_ID)[0]
        )


def _chat_body(data_urls: list[str], max_tokens: int = 8) -> dict:
    parts = [{"type": "text", "text": "look "}]
    for url in data_urls:
        parts.append({"type": "image_url", "image_url": {"url": url}})
    parts.append({"type": "text", "text": " what now?"})
    return {"messages": [{"role": "user", "content": parts}], "max_tokens": max_tokens, "temperature": 0}


def test_chat_completions_with_image_parts_equal_generate(vlm_server):
    import httpx

    from shared.vlm import image_placeholder_text

    family, url, target, processor = vlm_server
    images = [frame(7)]
    data_url = "data:image/png;base64," + _b64(_png_bytes(images[0]))
    reply = httpx.post(url + "/v1/chat/completions", json=_chat_body([data_url]), headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    # The oracle's prompt: the chat template, then the processor's own expansion of the placeholder.
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"look {image_placeholder_text(processor, 1)} what now?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt = processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()
    expected = oracle_vlm_greedy(target, processor, prompt, images, 8, eos=EOS_ID)
    body = reply.json()
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["choices"][0]["message"]["content"] == processor.tokenizer.decode(
        expected, skip_special_tokens=True
    )


def test_chat_bad_image_parts_are_client_errors(vlm_server):
    import httpx

    family, url, target, processor = vlm_server
    png = _png_bytes(frame(0))
    cases = [
        (["https://example.com/cat.png"], 400, "bad_image"),
        (["data:image/png;base64," + _b64(png[:30])], 400, "bad_image"),
        (["data:image/png;base64," + _b64(_png_bytes(frame(9, (64, 64))))], 413, "too_large"),
        (["data:image/png;base64," + _b64(png)] * 3, 400, "limit_exceeded"),
    ]
    for urls, status, code in cases:
        reply = httpx.post(url + "/v1/chat/completions", json=_chat_body(urls), headers=AUTH, timeout=60)
        assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text
    assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_restart_with_images_continues_exactly(vlm_server):
    """An edge restarting a lost generation sends its committed ids (`generated` of them output already)
    with the same images: the new session continues exactly where the old one was."""
    family, url, target, processor = vlm_server
    images = [frame(5)]
    prompt = image_prompt(processor, images)
    expected = oracle_vlm_greedy(target, processor, prompt, images, 8, eos=EOS_ID)
    done = 3
    payload = payload_from_image(images[0]).model_dump()
    with connect(_ws(url), additional_headers=AUTH) as ws:
        _handshake(ws)
        restart = {
            "type": "start",
            "token_ids": [*prompt, *expected[:done]],
            "generated": done,
            "max_tokens": 8,
            "images": [payload],
        }
        ws.send(json.dumps(restart))
        started = json.loads(ws.recv())
        assert started["type"] == "started", started
        assert started["first_token"] == expected[done]


def test_text_prompt_with_placeholders_is_laid_out_by_the_server(vlm_server):
    """A thin client sends `prompt` text holding the placeholders; the server's processor expands them."""
    from shared.vlm import image_placeholder_text

    family, url, target, processor = vlm_server
    images = [frame(6)]
    text = f"look {image_placeholder_text(processor, 1)} what now?"
    payload = payload_from_image(images[0]).model_dump()
    with connect(_ws(url), additional_headers=AUTH) as ws:
        _handshake(ws)
        ws.send(json.dumps({"type": "start", "prompt": text, "max_tokens": 4, "images": [payload]}))
        started = json.loads(ws.recv())
    prompt = image_prompt(processor, images)
    assert (started["type"], started["prompt_hash"]) == ("started", ids_hash(prompt)), started
    assert started["first_token"] == oracle_vlm_greedy(target, processor, prompt, images, 1, eos=EOS_ID)[0]
