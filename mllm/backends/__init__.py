"""The MLLM behind THI and RDA, as two questions any backend answers for a batch of requests.

    yes_probability(requests) -> [P(Yes) / (P(Yes) + P(No))]   one forward pass, next-token distribution
    generate(requests, max_new_tokens) -> [text]                greedy, for the VQA answers and the aggregation

`model_id` names everything that changes an answer (backend, weights, LoRA, precision, image size): the
answer cache is keyed by it.  Models load on first use, so a run whose answers are all cached never loads one.
A model that cannot load raises MLLMLoadError, once: no request could be answered, so the run stops there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass

# Qwen2-VL's own default system prompt: every request's unless it says otherwise
SYSTEM_PROMPT = "You are a helpful assistant."
# Qwen2-VL's image size in THI (docs/METHOD.md §7.2): 224 x 224
DEFAULT_PIXELS = 50_176
BACKENDS = ("transformers", "vllm")
# requests per call: what fits one padded forward pass, and for vLLM enough to keep its scheduler full (it
# batches internally up to max_num_seqs and refills as sequences finish; the cache is written per call)
DEFAULT_BATCH = {"transformers": 16, "vllm": 1024}


@dataclass(frozen=True)
class Request:
    prompt: str
    image: str | None = None        # path of the image shown before the prompt; None = text only
    system: str = SYSTEM_PROMPT


DTYPES = ("auto", "float32", "bfloat16", "float16")


class MLLMLoadError(SystemExit):
    """The MLLM could not be loaded or its engine not started (a folder without weights, too little memory):
    every request would fail the same way, so the command stops at once with the loader's message.  A
    SystemExit, so that the per-request error handling (`except Exception`) lets it through and the command
    ends with the message and exit status 1, without a traceback."""


class Backend:
    name = ""
    precision = ""      # set by each backend: part of model_id
    _load_error: MLLMLoadError | None = None

    def __init__(self, model_dir: str, lora: str | None = None, min_pixels: int = DEFAULT_PIXELS,
                 max_pixels: int = DEFAULT_PIXELS):
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise SystemExit(f"--model_dir {model_dir}: no config.json there; expected a Hugging Face model "
                             "folder such as Qwen2-VL-7B-Instruct (or one written by python -m thi.merge_lora)")
        if lora is not None and not os.path.isfile(os.path.join(lora, "adapter_config.json")):
            raise SystemExit(f"--lora {lora}: no adapter_config.json there; expected a peft LoRA adapter folder")
        if min_pixels > max_pixels:
            raise SystemExit(f"--min_pixels {min_pixels} is larger than --max_pixels {max_pixels}")
        self.model_dir, self.lora = os.path.abspath(model_dir), lora and os.path.abspath(lora)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    @property
    def model_id(self) -> str:
        parts = [self.name, self.model_dir, folder_fingerprint(self.model_dir), self.precision,
                 f"pixels={self.min_pixels}-{self.max_pixels}"]
        if self.lora:
            parts += ["lora", self.lora, folder_fingerprint(self.lora)]
        return "|".join(parts)

    def load(self) -> None:
        """Load the model if it is not loaded yet.  A failure is raised as MLLMLoadError with the loader's own
        message and a hint, and raised again by every later call without a second attempt (an engine start
        can take minutes)."""
        if self._load_error is not None:
            raise self._load_error
        try:
            self._load()
        except MLLMLoadError as e:
            self._load_error = e
            raise
        except Exception as e:  # noqa: BLE001 -- whatever the loader raised, reported with its own words
            self._load_error = MLLMLoadError(
                f"{self.name} backend: the MLLM could not be loaded from {self.model_dir}"
                f"{f' with the LoRA adapter {self.lora}' if self.lora else ''}: {type(e).__name__}: {e}\n"
                f"{self.load_hint(e)}")
            raise self._load_error from e

    def _load(self) -> None:
        raise NotImplementedError

    def load_hint(self, error: Exception) -> str:
        return ("Check that --model_dir is a complete Qwen2-VL model folder (config.json, the weights "
                "*.safetensors, the tokenizer and preprocessor files), and that the machine has the memory for it.")

    def yes_probability(self, requests: list[Request]) -> list[float]:
        raise NotImplementedError

    def generate(self, requests: list[Request], max_new_tokens: int) -> list[str]:
        raise NotImplementedError


def folder_fingerprint(folder: str) -> str:
    """Names, sizes and mtimes of a model folder's weight and config files: a re-merged folder is a new model."""
    entries = []
    for name in sorted(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin", ".json")):
            st = os.stat(os.path.join(folder, name))
            entries.append([name, st.st_size, int(st.st_mtime)])
    return hashlib.sha1(json.dumps(entries).encode()).hexdigest()[:12]


def make_backend(name: str, model_dir: str, lora: str | None = None, **opts) -> Backend:
    """`transformers` or `vllm`; opts go to that backend (unknown ones are an error, not silently dropped)."""
    if name == "transformers":
        from .hf import TransformersBackend
        return TransformersBackend(model_dir, lora=lora, **opts)
    if name == "vllm":
        from .vllm import VLLMBackend
        return VLLMBackend(model_dir, lora=lora, **opts)
    raise SystemExit(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")


def add_backend_args(p, model_flags: tuple[str, ...] = ("--model_dir",), required: bool = True) -> None:
    """The MLLM options of every command that asks Qwen2-VL (THI, RDA, the benchmarks).  The search page names
    the model folder --mllm and makes it optional (no folder: no THI panel); it is args.model_dir either way."""
    p.add_argument(*model_flags, dest="model_dir", required=required,
                   help="Qwen2-VL model folder (e.g. Qwen2-VL-7B-Instruct, or merged)")
    p.add_argument("--backend", choices=BACKENDS, default="transformers",
                   help="transformers (any device) or vllm (its GPU build, or its CPU build: see the README)")
    p.add_argument("--lora", help="peft LoRA adapter folder applied on top of --model_dir")
    p.add_argument("--batch_size", type=int, help="MLLM requests handed over at once, and cached together "
                   f"(default: {', '.join(f'{b} {n}' for b, n in DEFAULT_BATCH.items())})")
    p.add_argument("--max_new_tokens", type=int, default=256, help="length limit of every generated answer")
    p.add_argument("--min_pixels", type=int, default=DEFAULT_PIXELS, help="image size range given to the MLLM")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_PIXELS)
    p.add_argument("--mllm_device", help="transformers backend: device of the MLLM (default: cuda if there is one)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="precision of the MLLM (default auto: transformers bf16 on a GPU and float32 on CPU; vLLM "
                        "its own rule, the checkpoint's dtype for Qwen2-VL's bf16 weights)")
    v = p.add_argument_group("vllm backend")
    v.add_argument("--max_model_len", type=int, default=4096, help="context length (bounds vLLM's KV cache)")
    v.add_argument("--gpu_memory_utilization", type=float,
                   help="fraction of the GPU's memory vLLM may take, weights and KV cache (default 0.85 on a GPU; "
                        "vLLM's CPU build sizes its KV cache by --kv_cache_gib instead)")
    v.add_argument("--kv_cache_gib", type=float,
                   help="KV cache size in GiB, instead of a memory fraction (default: on vLLM's CPU build "
                        "VLLM_CPU_KVCACHE_SPACE or 4; on a GPU, what --gpu_memory_utilization leaves)")
    v.add_argument("--enforce_eager", action=argparse.BooleanOptionalAction,
                   help="run without CUDA graphs / torch.compile (default: eager on vLLM's CPU build, where "
                        "compiling costs 30-60 s at start-up and THI's one-token calls gain little; compiled on a GPU)")
    v.add_argument("--max_num_seqs", type=int, help="sequences the engine runs at once (default: vLLM's own; lower "
                   "it if a small GPU runs out of memory)")
    v.add_argument("--tensor_parallel_size", type=int, default=1,
                   help="GPUs one engine spans (a model too large for one card); for throughput use --shard instead")


def backend_from_args(args) -> Backend:
    """The backend the options ask for; also fills in the backend's default --batch_size."""
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH[args.backend]
    elif args.batch_size < 1:
        raise SystemExit(f"--batch_size {args.batch_size}: must be at least 1")
    opts = dict(min_pixels=args.min_pixels, max_pixels=args.max_pixels, dtype=args.dtype)
    if args.backend == "vllm":
        opts.update(max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
                    kv_cache_gib=args.kv_cache_gib, enforce_eager=args.enforce_eager,
                    max_num_seqs=args.max_num_seqs, tensor_parallel_size=args.tensor_parallel_size)
    else:
        opts.update(device=args.mllm_device)
    return make_backend(args.backend, args.model_dir, lora=args.lora, **opts)
