"""Qwen2-VL through vLLM's offline engine (GPU only; pip install vllm).

The context length is set explicitly: left unset, vLLM reserves KV cache for Qwen2-VL's full 32k context and
a 7B model does not fit a 24 GB card.  THI's prompts are one 224 x 224 image (64 tokens) and a few hundred words.
"""
from __future__ import annotations

import importlib.util
import json
import os

from . import DEFAULT_PIXELS, Backend
from .chat import prompts_and_images
from .yes_no import answer_token_ids, yes_probability_from_logprobs

# vLLM returns at most this many log-probabilities per position by default (its max_logprobs)
TOP_LOGPROBS = 20
_LORA_RANKS = (8, 16, 32, 64, 128, 256)   # the max_lora_rank values vLLM accepts


class VLLMBackend(Backend):
    name = "vllm"
    precision = "auto"   # vLLM runs the checkpoint's dtype (bf16 for Qwen2-VL)

    def __init__(self, model_dir: str, lora: str | None = None, max_model_len: int = 4096,
                 gpu_memory_utilization: float = 0.85, max_num_seqs: int | None = None, tensor_parallel_size: int = 1,
                 min_pixels: int = DEFAULT_PIXELS, max_pixels: int = DEFAULT_PIXELS, seed: int = 0):
        if importlib.util.find_spec("vllm") is None:
            raise SystemExit("--backend vllm: vLLM is not installed. Install it with `pip install vllm` (it needs an "
                             "NVIDIA GPU), or use --backend transformers.")
        super().__init__(model_dir, lora, min_pixels, max_pixels)
        self.engine_args = dict(model=self.model_dir, max_model_len=max_model_len,
                                gpu_memory_utilization=gpu_memory_utilization,
                                tensor_parallel_size=tensor_parallel_size, limit_mm_per_prompt={"image": 1}, seed=seed)
        if max_num_seqs is not None:
            self.engine_args["max_num_seqs"] = max_num_seqs
        if self.lora:
            self.engine_args.update(enable_lora=True, max_lora_rank=lora_rank_bound(self.lora))
        self._llm = self._processor = self._lora_request = None

    def _load(self):
        if self._llm is not None:
            return
        from transformers import AutoProcessor
        from vllm import LLM

        self._processor = AutoProcessor.from_pretrained(self.model_dir)   # chat template, as the HF backend
        self.yes_ids, self.no_ids = answer_token_ids(self._processor.tokenizer)
        self._llm = LLM(**self.engine_args)
        if self.lora:
            from vllm.lora.request import LoRARequest
            self._lora_request = LoRARequest("thi_lora", 1, self.lora)

    def _run(self, requests, sampling):
        self._load()
        texts, images = prompts_and_images(self._processor, requests, self.min_pixels, self.max_pixels)
        prompts = [{"prompt": t} if im is None else {"prompt": t, "multi_modal_data": {"image": im}}
                   for t, im in zip(texts, images)]
        return self._llm.generate(prompts, sampling, lora_request=self._lora_request, use_tqdm=False)

    def yes_probability(self, requests):
        from vllm import SamplingParams

        self._load()
        # one decoding step restricted to the answer tokens; its log-probabilities carry the decision
        sampling = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS,
                                  allowed_token_ids=self.yes_ids + self.no_ids)
        outputs = self._run(requests, sampling)
        return [yes_probability_from_logprobs({tok: lp.logprob for tok, lp in o.outputs[0].logprobs[0].items()},
                                              self.yes_ids, self.no_ids) for o in outputs]

    def generate(self, requests, max_new_tokens: int):
        from vllm import SamplingParams

        outputs = self._run(requests, SamplingParams(max_tokens=max_new_tokens, temperature=0.0))
        return [o.outputs[0].text.strip() for o in outputs]


def lora_rank_bound(lora_dir: str) -> int:
    """The smallest max_lora_rank vLLM accepts that holds the adapter's rank."""
    with open(os.path.join(lora_dir, "adapter_config.json")) as f:
        rank = int(json.load(f).get("r", 8))
    return next((r for r in _LORA_RANKS if r >= rank), rank)
