"""Images on the wire: `{"mime", "data"}` payloads (base64 or a `data:` URL), checked before any model work.

Every way an image can be bad is the client's mistake with a stable code: `too_large` (bytes or pixels over
the limit), `limit_exceeded` (more images than `max_images`), `bad_image` (not base64, not PNG / JPEG, a
declared type that is not the real one, truncated or undecodable).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict

from shared.errors import ProtocolError

ImageMime = Literal["image/png", "image/jpeg"]
MIME_OF_FORMAT: dict[str, ImageMime] = {"PNG": "image/png", "JPEG": "image/jpeg"}
DEFAULT_MAX_IMAGES = 4
# Well inside the default websocket frame limit (1 MiB) with its base64 growth; a camera frame is far less.
DEFAULT_MAX_IMAGE_BYTES = 512 * 1024
# Decoded size: a small PNG can expand to gigabytes (a "decompression bomb"); frames here are small.
MAX_IMAGE_PIXELS = 4096 * 4096
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S
)


class ImagePayload(BaseModel):
    """One image of `start.images`: its declared type and its bytes as base64 (or a whole `data:` URL)."""

    model_config = ConfigDict(extra="ignore")
    mime: str = "image/png"
    data: str


def payload_from_data_url(url: str) -> ImagePayload:
    """`data:image/png;base64,....` → a payload (`bad_image` for any other URL: nothing is fetched)."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ProtocolError("bad_image", "images must be data: URLs with base64 content")
    return ImagePayload(mime=match["mime"] or "image/png", data=match["data"])


def payload_from_file(path: str | Path) -> ImagePayload:
    """A PNG or JPEG file as a payload (its type read from the bytes, not the name)."""
    raw = Path(path).read_bytes()
    image = _open(raw)
    return ImagePayload(mime=MIME_OF_FORMAT[image.format], data=base64.b64encode(raw).decode("ascii"))


def payload_from_image(image: Image.Image) -> ImagePayload:
    """A PIL image as a lossless PNG payload."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return ImagePayload(mime="image/png", data=base64.b64encode(buffer.getvalue()).decode("ascii"))


def decode_payload(payload: ImagePayload, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """The RGB image of one payload, fully decoded (so a truncated file fails here, not in the model)."""
    data = payload.data
    if data.startswith("data:"):
        payload = payload_from_data_url(data)
        data = payload.data
    if payload.mime not in MIME_OF_FORMAT.values():
        raise ProtocolError("bad_image", f"image type {payload.mime[:40]!r} unsupported (PNG or JPEG)")
    # base64 is 4 characters per 3 bytes: refuse an oversized image before decoding it.
    if len(data) > 4 * (max_bytes // 3 + 1):
        raise ProtocolError("too_large", f"image larger than max_image_bytes ({max_bytes})")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_image", "image data is not valid base64") from None
    if len(raw) > max_bytes:
        raise ProtocolError("too_large", f"image larger than max_image_bytes ({max_bytes})")
    image = _open(raw)
    if MIME_OF_FORMAT[image.format] != payload.mime:
        raise ProtocolError("bad_image", f"image declared {payload.mime} but is {image.format}")
    return image.convert("RGB")


def decode_payloads(
    payloads: Sequence[ImagePayload],
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> list[Image.Image]:
    """All images of a request, the count checked before any is decoded."""
    if len(payloads) > max_images:
        raise ProtocolError(
            "limit_exceeded", f"{len(payloads)} images > max_images ({max_images})", retryable=False
        )
    return [decode_payload(p, max_bytes) for p in payloads]


def _open(raw: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format not in MIME_OF_FORMAT:
            raise ProtocolError("bad_image", f"image format {image.format} unsupported (PNG or JPEG)")
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ProtocolError("too_large", f"image of {image.width}x{image.height} pixels is too large")
        image.load()  # decodes everything: truncated data raises here
    except ProtocolError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ProtocolError(
            "bad_image", "the image could not be decoded (truncated or not an image)"
        ) from None
    return image


def expand_image_prompt(processor: Any, text: str, images: Sequence[Image.Image]) -> list[int]:
    """A text prompt's ids with its image placeholders expanded by the model's processor (`bad_image`
    when the text's placeholders do not fit the images)."""
    try:
        out = processor(text=[text], images=list(images), return_tensors="pt")
    except Exception as exc:  # processors raise ValueError on a placeholder / image count mismatch
        raise ProtocolError("bad_image", "the prompt's image placeholders do not match the images") from exc
    return [int(t) for t in out["input_ids"][0]]


def expand_image_chat(processor: Any, tokenizer: Any, messages: list[dict[str, Any]], images) -> list[int]:
    """Chat messages (their text holding the image placeholders) through the chat template, then the
    processor's expansion."""
    if not getattr(tokenizer, "chat_template", None):
        raise ProtocolError("bad_frame", "the model's tokenizer has no chat template; send token_ids")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:
        raise ProtocolError("bad_frame", "the chat template rejected the messages") from exc
    return expand_image_prompt(processor, text, images)
