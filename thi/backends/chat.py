"""Requests -> Qwen2-VL chat prompts and resized images, shared by both backends so they see the same input."""
from __future__ import annotations

from datasets.loaders import read_image


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
