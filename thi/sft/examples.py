"""The SFT examples: (question, answer) pairs read from a thi.sft_data folder, each question a THI request."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from mllm.backends import SYSTEM_PROMPT, Request
from ..sft_data import DATA_FILE, IMAGE_TOKEN


@dataclass(frozen=True)
class Example:
    request: Request
    answer: str


def read_examples(data: str) -> list[Example]:
    """The (question, answer) pairs of a thi.sft_data folder or file (LLaMA-Factory's sharegpt layout)."""
    path = os.path.join(data, DATA_FILE) if os.path.isdir(data) else data
    if not os.path.isfile(path):
        raise SystemExit(f"--data {data}: no {DATA_FILE} there; make it with python -m thi.sft_data")
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    examples = []
    for i, record in enumerate(records):
        try:
            user, assistant = record["messages"]
            assert user["role"] == "user" and assistant["role"] == "assistant"
            images = record.get("images") or []
            assert len(images) <= 1 and user["content"].startswith(IMAGE_TOKEN) == bool(images)
        except (KeyError, ValueError, TypeError, AssertionError):
            raise SystemExit(f"{path}: record {i} is not one user turn (with '{IMAGE_TOKEN}' first when it has an "
                             "image) and one assistant turn, in the sharegpt layout thi.sft_data writes") from None
        prompt = user["content"].removeprefix(IMAGE_TOKEN)
        examples.append(Example(Request(prompt, images[0] if images else None, record.get("system", SYSTEM_PROMPT)),
                                assistant["content"]))
    if not examples:
        raise SystemExit(f"{path}: no examples")
    return examples
