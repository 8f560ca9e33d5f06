"""Examples -> model inputs through THI's own chat code (mllm/backends/chat.py), so that the model is trained on
exactly the input THI shows it at inference; labels on the answer tokens only."""
from __future__ import annotations

import torch

from mllm.backends import DEFAULT_PIXELS
from mllm.backends.chat import processor_size, prompts_and_images
from .examples import Example

END_OF_TURN = "<|im_end|>"        # Qwen2-VL's chat template closes every turn with it; the answer includes it
IGNORE = -100                     # label of tokens without a loss (prompt, padding)


class Encoder:
    """Examples -> model inputs: THI's chat prompt (up to the assistant header) + the answer and end of turn,
    labels on the answer tokens only, right padding."""

    def __init__(self, processor, min_pixels: int = DEFAULT_PIXELS, max_pixels: int = DEFAULT_PIXELS):
        self.processor, self.min_pixels, self.max_pixels = processor, min_pixels, max_pixels
        tok = processor.tokenizer
        self.end_id = tok.convert_tokens_to_ids(END_OF_TURN)
        if self.end_id is None or self.end_id == tok.unk_token_id:
            raise SystemExit(f"the tokenizer has no {END_OF_TURN} token: thi.sft expects a Qwen2-VL chat model")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.end_id

    def answer_ids(self, answer: str) -> list[int]:
        # tokenised apart from the prompt: the first label is then the very token THI's yes/no scorer reads
        # after the assistant header (mllm/backends/yes_no.py encodes "Yes" / "No" the same way)
        return self.processor.tokenizer.encode(answer, add_special_tokens=False) + [self.end_id]

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        texts, images = prompts_and_images(self.processor, [e.request for e in examples], self.min_pixels,
                                           self.max_pixels)
        rows, extra, pixels, grids = [], [], [], []
        for text, image, example in zip(texts, images, examples):
            # the processor's size range of THI's backends, which keeps the resized image: the same image tokens
            image_kwargs = {} if image is None else {"images": [image],
                                                     "size": processor_size(self.min_pixels, self.max_pixels)}
            enc = self.processor(text=[text], return_tensors="pt", **image_kwargs)
            prompt = enc["input_ids"][0].tolist()
            answer = self.answer_ids(example.answer)
            rows.append((prompt + answer, [IGNORE] * len(prompt) + answer))
            # other per-token inputs (mm_token_type_ids: which tokens are image tokens, for M-RoPE): 0 past
            # the prompt, as the answer and the padding are text
            extra.append({k: v[0].tolist() for k, v in enc.items()
                          if k not in ("input_ids", "attention_mask") and v.dim() == 2 and v.shape[1] == len(prompt)})
            if image is not None:
                pixels.append(enc["pixel_values"])
                grids.append(enc["image_grid_thw"])
        length = max(len(ids) for ids, _ in rows)

        def padded(seqs, value):
            return torch.tensor([seq + [value] * (length - len(seq)) for seq in seqs])

        batch = {"input_ids": padded([ids for ids, _ in rows], self.pad_id),
                 "attention_mask": padded([[1] * len(ids) for ids, _ in rows], 0),
                 "labels": padded([labels for _, labels in rows], IGNORE)}
        for key in extra[0]:
            batch[key] = padded([e[key] for e in extra], 0)
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
            batch["image_grid_thw"] = torch.cat(grids)
        return batch
