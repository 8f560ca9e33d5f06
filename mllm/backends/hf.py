"""Qwen2-VL through Hugging Face transformers: bf16 on a GPU, fp32 on CPU, batched with left padding."""
from __future__ import annotations

import torch

from utils.device import resolve_device, resolve_precision
from . import DEFAULT_PIXELS, Backend
from .chat import processor_size, prompts_and_images
from .yes_no import answer_token_ids, yes_probability_from_logits


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model_dir: str, lora: str | None = None, device: str | None = None,
                 min_pixels: int = DEFAULT_PIXELS, max_pixels: int = DEFAULT_PIXELS, dtype: str = "auto"):
        super().__init__(model_dir, lora, min_pixels, max_pixels)
        self.device = resolve_device(device or "auto")
        # auto: bf16 on a GPU, float32 on CPU (the training's autocast rule, here the weights' dtype)
        self.dtype = getattr(torch, dtype) if dtype != "auto" else (resolve_precision("auto", self.device)
                                                                    or torch.float32)
        self.precision = str(self.dtype).removeprefix("torch.")
        self._model = self._processor = None

    def _load(self):
        if self._model is not None:
            return
        from transformers import Qwen2VLForConditionalGeneration

        model = Qwen2VLForConditionalGeneration.from_pretrained(self.model_dir, dtype=self.dtype)
        if self.lora:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, self.lora)
        self.use_model(model)

    def use_model(self, model) -> None:
        """Answer with `model` (a Qwen2-VL, processor read from model_dir): the end of _load, and how the
        benchmark hands over a model built in memory."""
        from transformers import AutoProcessor

        disable_cudnn_attention(self.device)
        processor = AutoProcessor.from_pretrained(self.model_dir)
        processor.tokenizer.padding_side = "left"   # so that position -1 is every row's answer position
        self._model = model.to(self.device, self.dtype).eval()
        self._processor = processor
        self.yes_ids, self.no_ids = answer_token_ids(processor.tokenizer)

    def _inputs(self, requests):
        self.load()
        texts, images = prompts_and_images(self._processor, requests, self.min_pixels, self.max_pixels)
        images = [im for im in images if im is not None]
        size = {"size": processor_size(self.min_pixels, self.max_pixels)} if images else {}
        inputs = self._processor(text=texts, images=images or None, padding=True, return_tensors="pt", **size)
        return inputs.to(self.device)

    @torch.inference_mode()
    def yes_probability(self, requests):
        inputs = self._inputs(requests)
        logits = self._model(**inputs, logits_to_keep=1).logits[:, -1]
        return yes_probability_from_logits(logits, self.yes_ids, self.no_ids)

    @torch.inference_mode()
    def generate(self, requests, max_new_tokens: int):
        inputs = self._inputs(requests)
        out = self._model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   temperature=None, top_p=None, top_k=None)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self._processor.batch_decode(new_tokens, skip_special_tokens=True)]


def disable_cudnn_attention(device: torch.device) -> None:
    """cuDNN attention plans anew for every new sequence shape, and Qwen2-VL's vision tower runs attention once
    per image (each its own length): the set-up cost dominated.  The other SDPA kernels have none."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
