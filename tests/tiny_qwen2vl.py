"""A tiny random Qwen2-VL saved like a real checkpoint folder, built offline in a second or two.

Why: the THI code loads a model folder with AutoProcessor + Qwen2VLForConditionalGeneration (or vLLM);
to run that code for real in tests we need a folder with the same files, the same special tokens and the
same chat template as Qwen2-VL-7B-Instruct, only with a few thousand random parameters.  The tokenizer is a
byte-level BPE trained here on a small text, with "Yes" and "No" as single tokens (the yes/no scorer
compares exactly those two logits).

    from tests.tiny_qwen2vl import build_tiny_qwen2vl
    build_tiny_qwen2vl("/tmp/tiny", favour="Yes")
"""
from __future__ import annotations

import json
import os

import torch

# Qwen2-VL's special tokens, in its order (their ids follow the BPE vocabulary, as in the real tokenizer)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL-Instruct's chat template (system turn by default, images as vision_start + image_pad + vision_end)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the BPE is trained on: the words THI's prompts and the synthetic captions use, and the answers.
_CORPUS = [
    "Yes", "No", "Yes.", "No.", " Yes", " No",
    "You are a helpful assistant.",
    "Does the description accurately describe the person in the image? Answer Yes or No.",
    "A man wearing a red long-sleeved shirt, black trousers and white shoes, carrying a backpack.",
    "A woman with blond hair in a blue coat and a green skirt, holding a brown handbag.",
    "1. male 2. short black hair 3. white t-shirt 4. blue jeans 5. no glasses 6. walking on the street",
    "Answer the questions about the person in the image, one numbered line each.",
    "Merge the description and the answers into concise continuous sentences.",
    "gender hair upper clothing lower clothing pattern shoes glasses scarf bag backpack hat belt action background",
]


def train_tokenizer(vocab_size: int = 600, corpus: list[str] | None = None):
    """A byte-level BPE with Qwen2-VL's special tokens and chat template, trained offline on `corpus`
    (default: a few captions and prompt-like lines); "Yes" and "No" are single tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # answers repeated so that their merges are among the first learnt
    bpe.train_from_iterator((corpus or _CORPUS * 3) + ["Yes No"] * 50, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Qwen2TokenizerFast(vocab=state["vocab"], merges=merges, unk_token=None, bos_token=None,
                             eos_token="<|im_end|>", pad_token="<|endoftext|>", errors="replace")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tok.chat_template = CHAT_TEMPLATE
    for word in ("Yes", "No"):
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1, f"{word!r} is not a single token in the tiny tokenizer: {ids}"
    return tok


def _tiny_config(tok):
    from transformers import Qwen2VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # text head size 32: the smallest vLLM's CPU attention kernels take (32, 64, 80 and up; 16 fails)
    hidden, heads = 64, 2
    head_dim = hidden // heads
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def _favour(model, processor, word: str) -> None:
    """Turn the lm_head row of `word` towards the answer position's hidden state, so the model says `word`.

    The last positions of every chat prompt are the same tokens ('<|im_end|>\\n<|im_start|>assistant\\n'), and
    a 2-layer model's hidden state there hardly depends on the rest, so one calibration prompt is enough.  The
    word's logit becomes about 0.6 |h| ~ 5 above the rest; free generation then mostly repeats it.
    """
    messages = [{"role": "user", "content": [{"type": "text", "text": "Is this a person? Answer Yes or No."}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], return_tensors="pt")
    with torch.no_grad():
        h = model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]   # after the final norm
        row = processor.tokenizer.convert_tokens_to_ids(word)
        model.lm_head.weight[row] = 0.6 * h / h.norm()


def build_tiny_qwen2vl(out_dir: str, seed: int = 0, favour: str | None = None) -> str:
    """Save a random Qwen2-VL (model, tokenizer, processor) under out_dir; returns out_dir.

    favour: "Yes" / "No" makes the model answer that word to (nearly) every yes/no question; None leaves it random.
    """
    from transformers import (Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    torch.manual_seed(seed)
    tok = train_tokenizer()
    # a range wider than the sizes THI resizes to, so its images pass through unchanged (as with the real model)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=CHAT_TEMPLATE)
    model = Qwen2VLForConditionalGeneration(_tiny_config(tok)).eval()
    if favour is not None:
        _favour(model, processor, favour)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"),
                                            tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
