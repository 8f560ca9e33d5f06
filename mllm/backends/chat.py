"""Requests -> Qwen2-VL chat prompts and resized images, shared by both backends so they see the same input."""
from __future__ import annotations

import math

from utils.images import read_image

PATCH = 28          # Qwen2-VL's image side unit: 14-pixel patches merged 2 x 2, one token each
MAX_RATIO = 200     # the longest aspect ratio qwen_vl_utils accepts


def processor_size(min_pixels: int, max_pixels: int) -> dict:
    """The `size` (pixel count range) to give Qwen2-VL's image processor, in both backends, so that it keeps
    the images prompts_and_images already resized: both backends then see the same image tokens.

    qwen_vl_utils' resize gives sides that are multiples of 28 and, when it scales up to reach min_pixels,
    rounds each side up, which can end above max_pixels (256 x 96 at 50,176 becomes 392 x 140 = 54,880).  The
    processor resizes anything outside its range once more, to a different size: a processor limited to
    max_pixels would see 392 x 140 shrunk, one left at the checkpoint's range would not.  The range here holds
    every size the resize can give, 28 x 28 up to (sqrt(min r) + 28)(sqrt(min / r) + 28) at the largest aspect
    ratio r; vLLM also plans its start-up memory for the top of it (~180 tokens at 224 x 224, not 16,384).
    """
    root = math.sqrt(MAX_RATIO)
    rounded_up = min_pixels + PATCH * math.sqrt(min_pixels) * (root + 1 / root) + PATCH * PATCH
    return {"shortest_edge": PATCH * PATCH, "longest_edge": max(max_pixels, math.ceil(rounded_up))}


def chat_messages(request, min_pixels: int, max_pixels: int) -> list[dict]:
    content = []
    if request.image is not None:
        # decoded here (not by qwen_vl_utils from the path) so that a missing or corrupt file raises
        # ImageDecodeError naming the path, which the caller records as that query's failure
        content.append({"type": "image", "image": read_image(request.image),
                        "min_pixels": min_pixels, "max_pixels": max_pixels})
    content.append({"type": "text", "text": request.prompt})
    return [{"role": "system", "content": request.system}, {"role": "user", "content": content}]


def prompts_and_images(processor, requests, min_pixels: int, max_pixels: int) -> tuple[list[str], list]:
    """(chat prompt text ending with the assistant turn's header, resized PIL image or None) per request."""
    from qwen_vl_utils import process_vision_info

    texts, images = [], []
    for request in requests:
        messages = chat_messages(request, min_pixels, max_pixels)
        texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        image_inputs, _ = process_vision_info(messages)[:2]
        images.append(image_inputs[0] if image_inputs else None)
    return texts, images
