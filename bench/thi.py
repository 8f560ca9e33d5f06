"""THI's MLLM throughput through the transformers backend: yes/no decisions per second and VQA answers per second.

The model is a randomly initialised Qwen2-VL (no download): `--arch 7b` is Qwen2-VL-7B's architecture (text:
hidden 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944, vocabulary 152064; vision: 32 blocks of width 1280)
built directly on the device in bf16; `--arch tiny` is tests/tiny_qwen2vl.py's model (CPU smoke run).  Both use
the tiny model's tokenizer and processor (Qwen2-VL's special tokens and chat template, a small byte-level BPE),
so prompts run a little longer in tokens than with Qwen's own tokenizer: the table gives the padded length.

Requests are what THI sends: the localisation question about a synthetic caption with a 224x224 person image
(`yes_probability`: one forward pass, the next-token distribution), and the human-centred VQA prompt with the
same images (`generate`, greedy).  A random model never says EOS on purpose, so every VQA answer is made exactly
--max_new_tokens long (generation_config.min_new_tokens): answers/s is for answers of that length.

    python bench/thi.py --arch 7b                           # GPU: batch 64
    python bench/thi.py --arch 7b --load save               # through save_pretrained + the backend's own loading
    python bench/thi.py --arch tiny --small                 # CPU smoke run
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.common import (add_common_args, finish_args, peak_memory_gib, report, reset_peak_memory, timed,  # noqa: E402
                          write_partial)

# Qwen2-VL-7B-Instruct's config.json, the fields that set the amount of compute
QWEN2VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", max_position_embeddings=32768,
                       rms_norm_eps=1e-6, use_sliding_window=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
QWEN2VL_7B_VISION = dict(depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_act="quick_gelu")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("7b", "tiny"), default=None, help="GPU: 7b; small: tiny")
    p.add_argument("--text_layers", type=int, default=None, help="7b: fewer decoder layers (e.g. on a smaller GPU)")
    p.add_argument("--vision_depth", type=int, default=None, help="7b: fewer vision blocks")
    p.add_argument("--init", choices=("random", "fast"), default="random",
                   help="7b, built directly: random = transformers' own initialisation (a second on a GPU); fast = "
                        "built without it (transformers' no_init_weights, as from_pretrained builds) and every "
                        "weight filled by tiling one block of normal draws (norms 1, biases 0): the CPU's normal_ "
                        "and uniform_ over 1.4 B weights took 20-30 s of bench.suite --rehearse")
    p.add_argument("--load", choices=("direct", "save"), default="direct",
                   help="7b: direct = build on the device and hand it to the backend; save = save_pretrained to a "
                        "temporary folder (~16 GB) and let the backend load it as THI does")
    p.add_argument("--batch_size", type=int, default=None, help="requests per batch (GPU 64, small 4)")
    p.add_argument("--batches", type=int, default=None, help="timed yes/no batches (GPU 5, small 2)")
    p.add_argument("--vqa_batches", type=int, default=None, help="timed VQA batches (GPU 2, small 1; 0: skip VQA)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="VQA answer length in tokens (GPU 128, small 8)")
    p.add_argument("--image_size", type=int, default=224, help="square images; THI's pixel budget is 224x224")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                   help="the MLLM's weights (auto: bf16 on CUDA, float32 on a CPU, the backends' rule); bfloat16 on "
                        "a CPU runs the GPU's dtype at half of float32's memory (bench.suite --rehearse)")
    p.add_argument("--backend", choices=("transformers", "vllm"), default="transformers",
                   help="vllm: its offline engine (its GPU build, or the CPU build's environment); --arch 7b then "
                        "runs on vLLM's own random weights (load_format dummy: nothing is written to disk)")
    p.add_argument("--max_model_len", type=int, default=2048, help="vllm: context length (prompts < 400 tokens)")
    p.add_argument("--enforce_eager", action="store_true",
                   help="vllm: no torch.compile / CUDA graphs (starts sooner, decodes slower)")
    return add_common_args(p)


def resolve_defaults(args):
    small = args.small
    args.arch = args.arch or ("tiny" if small else "7b")
    args.batch_size = args.batch_size or (4 if small else 64)
    args.batches = args.batches or (2 if small else 5)
    if args.vqa_batches is None:
        args.vqa_batches = 1 if small else 2
    args.max_new_tokens = args.max_new_tokens or (8 if small else 128)
    if args.dtype == "auto":
        cuda = str(args.device).startswith("cuda") or (str(args.device) == "auto" and torch.cuda.is_available())
        args.dtype = "bfloat16" if cuda else "float32"
    return args


def qwen2vl_7b_config(token_ids: dict, text_layers: int | None = None, vision_depth: int | None = None):
    """Qwen2-VL-7B's architecture with the special-token ids of the tokenizer in use."""
    from transformers import Qwen2VLConfig

    text = dict(QWEN2VL_7B_TEXT, bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"],
                pad_token_id=token_ids["pad"])
    if text_layers:
        text.update(num_hidden_layers=text_layers, max_window_layers=text_layers)
    vision = dict(QWEN2VL_7B_VISION, depth=vision_depth or QWEN2VL_7B_VISION["depth"])
    return Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=token_ids["image"],
                         video_token_id=token_ids["video"], vision_start_token_id=token_ids["vision_start"],
                         vision_end_token_id=token_ids["vision_end"], tie_word_embeddings=False,
                         # what a real checkpoint's config.json names: vLLM picks its model class (and that it
                         # generates) from it; a bare config saved without a model has none
                         architectures=["Qwen2VLForConditionalGeneration"])


def english_processor(folder: str, vocab_size: int = 8192, seed: int = 0) -> dict:
    """Replace the tiny tokenizer in `folder` by a byte-level BPE trained on THI's prompts and a few thousand
    synthetic captions, so that common words are one token each as with Qwen's 151k vocabulary (the tiny one
    splits the VQA prompt into about twice Qwen's count).  Same special tokens and chat template; returns their ids.
    """
    import random

    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from datasets.synthetic import _sample_identity, make_caption
    from tests.tiny_qwen2vl import CHAT_TEMPLATE, _CORPUS, train_tokenizer
    from mllm import vqa
    from mllm.backends import SYSTEM_PROMPT
    from thi.prompts import LOCALISATION_PROMPT

    rng = random.Random(seed)
    captions = [make_caption(_sample_identity(rng), rng) for _ in range(3000)]
    corpus = (_CORPUS + [SYSTEM_PROMPT, LOCALISATION_PROMPT, vqa.VQA_PROMPT,
                         vqa.AGGREGATION_PROMPT] + [q for _, q in vqa.VQA_QUESTIONS]) * 20 + captions
    tok = train_tokenizer(vocab_size, corpus)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
                                 tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    ids = tok.convert_tokens_to_ids
    return {"bos": ids("<|endoftext|>"), "eos": ids("<|im_end|>"), "pad": ids("<|endoftext|>"),
            "image": ids("<|image_pad|>"), "video": ids("<|video_pad|>"),
            "vision_start": ids("<|vision_start|>"), "vision_end": ids("<|vision_end|>")}


def build_random_7b(config, device: torch.device, dtype: torch.dtype, init: str = "random"):
    """Random weights (bf16 on a GPU) made on the device itself (transformers' own initialisation, on GPU kernels;
    init="fast": see fill_tiled)."""
    from transformers import Qwen2VLForConditionalGeneration

    if init == "fast":
        from transformers.initialization import no_init_weights

        with torch.device(device), no_init_weights():
            model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype)
        fill_tiled(model, config.text_config.initializer_range)
    else:
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model.eval()


@torch.no_grad()
def fill_tiled(model, std: float, block: int = 1 << 20, seed: int = 0) -> None:
    """Every parameter of a model built without initialisation: norms' weights 1 and biases 0, other biases 0,
    every other weight a tiling of one block of N(0, std) draws (a copy: memory speed instead of the random
    generator's, 0.5 s instead of 20-30 s for the 7B-wide model on a CPU).  Buffers (RoPE's inverse frequencies)
    are computed at construction, not by the initialisation."""
    draws = torch.randn(block, generator=torch.Generator().manual_seed(seed)) * std
    for module in model.modules():
        norm = "Norm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if norm:
                p.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                p.zero_()
            else:
                flat, b = p.view(-1), draws.to(p.device, p.dtype)
                whole = flat.numel() // block * block
                if whole:
                    flat[:whole].view(-1, block).copy_(b.expand(whole // block, block))
                flat[whole:].copy_(b[:flat.numel() - whole])


def make_requests(args, root: str):
    """(localisation requests, VQA requests): batch_size synthetic persons, their captions and 224x224 images."""
    from datasets import build_dataset
    from datasets.synthetic import make_synthetic
    from mllm.backends import Request
    from mllm.vqa import VQA_PROMPT
    from thi.prompts import localisation_prompt

    make_synthetic(root, fmt="CUHK-PEDES", num_train_ids=max(1, (args.batch_size + 1) // 2), num_test_ids=1,
                   num_val_ids=1, images_per_id=2, captions_per_image=1,
                   image_size=(args.image_size, args.image_size), seed=args.seed)
    records = build_dataset("CUHK-PEDES", root).train[:args.batch_size]
    records = (records * (args.batch_size // len(records) + 1))[:args.batch_size]
    yes_no = [Request(localisation_prompt(r.caption), image=r.img_path) for r in records]
    vqa = [Request(VQA_PROMPT, image=r.img_path) for r in records]
    return yes_no, vqa


def prompt_tokens(backend, requests) -> tuple[int, float]:
    """(padded length, mean unpadded length) of a batch in tokens, image tokens included."""
    inputs = backend._inputs(requests)
    return int(inputs["input_ids"].shape[1]), float(inputs["attention_mask"].sum(1).float().mean())


def config_fields(config) -> dict:
    """The widths, depths and vocabulary of a Qwen2VLConfig."""
    text, vision = config.text_config, config.vision_config
    return {"text": {k: getattr(text, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads", "num_key_value_heads", "vocab_size")},
            "vision": {k: getattr(vision, k) for k in ("embed_dim", "hidden_size", "depth", "num_heads",
                                                       "patch_size", "spatial_merge_size")}}


def qwen_summary(model, backend, requests) -> dict:
    """The sizes the model runs at: its config's widths and vocabulary, the shapes of the tensors that carry them,
    and the image tokens of one request (bench.suite --rehearse checks them against Qwen2-VL-7B)."""
    inner = model.model
    inputs = backend._inputs(requests[:1])
    image_tokens = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    return {"params": sum(p.numel() for p in model.parameters()), "dtype": str(next(model.parameters()).dtype),
            **config_fields(model.config),
            "shapes": {"embed_tokens": list(model.get_input_embeddings().weight.shape),
                       "lm_head": list(model.get_output_embeddings().weight.shape),
                       "text_layers": len(inner.language_model.layers),
                       "mlp_up": list(inner.language_model.layers[0].mlp.up_proj.weight.shape),
                       "patch_embed": list(inner.visual.patch_embed.proj.weight.shape),
                       "vision_blocks": len(inner.visual.blocks),
                       "merger_out": list(inner.visual.merger.mlp[-1].weight.shape)},
            "image_tokens_per_request": image_tokens, "pixel_values": list(inputs["pixel_values"].shape)}


def count_params(folder: str) -> int:
    """Parameters of the Qwen2-VL that folder's config.json describes (built on the meta device: no memory)."""
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def vllm_rows(args, folder: str, yes_no, vqa) -> tuple[list[dict], float]:
    """The same requests through `make_backend("vllm")`; 7b on vLLM's random weights (load_format dummy).

    The engine runs in processes of its own, so peak memory is not measured here (vLLM takes
    gpu_memory_utilization of the card for weights and KV cache).  VQA answers are made exactly
    --max_new_tokens long with min_tokens + ignore_eos, and checked."""
    from vllm import SamplingParams

    from mllm.backends import make_backend

    cpu = torch.device("cpu")          # the engine syncs its own device: time on the host clock only
    opts = dict(dtype=args.dtype, max_model_len=args.max_model_len,
                seed=args.seed)
    if args.device.type != "cuda":
        opts["kv_cache_gib"] = 1
    if args.enforce_eager:
        opts["enforce_eager"] = True
    if args.arch == "7b":
        for name in os.listdir(folder):     # the tiny weights: vLLM makes its own
            if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                os.remove(os.path.join(folder, name))
    backend = make_backend("vllm", folder, **opts)
    if args.arch == "7b":
        backend.engine_args["load_format"] = "dummy"
    start = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - start
    params = count_params(folder)
    from transformers import AutoConfig
    args._model = {"params": params, "dtype": args.dtype, **config_fields(AutoConfig.from_pretrained(folder))}

    def lengths(requests):
        outs = backend._run(requests, SamplingParams(max_tokens=1, temperature=0.0))     # also a warm-up
        n = [len(o.prompt_token_ids) for o in outs]
        return max(n), sum(n) / len(n)

    padded, mean_len = lengths(yes_no)
    yes_s, probs = timed(lambda: backend.yes_probability(yes_no), cpu, args.batches)
    assert len(probs) == args.batch_size and all(0.0 <= p <= 1.0 for p in probs)
    rows = [{"task": "yes/no (localisation)", "backend": "vllm", "arch": args.arch, "params_b": params / 1e9,
             "batch_size": args.batch_size, "prompt_tokens_padded": padded, "prompt_tokens_mean": mean_len,
             "new_tokens": 1, "batch_s": yes_s, "per_s": args.batch_size / yes_s, "tokens_per_s": None,
             "peak_mem_gib": None}]
    write_partial("thi", args, rows, {"load_s": load_s, "model": args._model})
    if args.vqa_batches:
        padded, mean_len = lengths(vqa)
        n = args.max_new_tokens
        sampling = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)
        vqa_s, outs = timed(lambda: backend._run(vqa, sampling), cpu, args.vqa_batches)
        assert len(outs) == args.batch_size and all(len(o.outputs[0].token_ids) == n for o in outs)
        rows.append({"task": "VQA answer", "backend": "vllm", "arch": args.arch, "params_b": params / 1e9,
                     "batch_size": args.batch_size, "prompt_tokens_padded": padded, "prompt_tokens_mean": mean_len,
                     "new_tokens": n, "batch_s": vqa_s, "per_s": args.batch_size / vqa_s,
                     "tokens_per_s": args.batch_size * n / vqa_s, "peak_mem_gib": None})
    return rows, load_s


def main(argv=None) -> dict:
    from tests.tiny_qwen2vl import build_tiny_qwen2vl
    from mllm.backends import make_backend

    args = resolve_defaults(finish_args(build_parser().parse_args(argv)))
    device = args.device
    work = tempfile.mkdtemp(prefix="bench_thi_")
    try:
        folder = build_tiny_qwen2vl(os.path.join(work, "model"), seed=args.seed)   # tokenizer, processor, config
        yes_no, vqa = make_requests(args, os.path.join(work, "data"))
        if args.backend == "vllm":
            if args.arch == "7b":
                config = qwen2vl_7b_config(english_processor(folder, seed=args.seed), args.text_layers,
                                           args.vision_depth)
                config.save_pretrained(folder)
            rows, load_s = vllm_rows(args, folder, yes_no, vqa)
            return finish(args, rows, load_s)
        start = time.perf_counter()
        if args.arch == "7b":
            config = qwen2vl_7b_config(english_processor(folder, seed=args.seed), args.text_layers, args.vision_depth)
            model = build_random_7b(config, device, getattr(torch, args.dtype), args.init)
            config.save_pretrained(folder)          # the folder now describes the 7B model (config.json)
            if args.load == "save":
                for name in os.listdir(folder):
                    if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                        os.remove(os.path.join(folder, name))
                model.save_pretrained(folder)
                del model
        backend = make_backend("transformers", folder, device=str(device), dtype=args.dtype)
        if args.arch == "7b" and args.load == "direct":
            backend.use_model(model)
            del model
        else:
            backend._load()
        load_s = time.perf_counter() - start
        model = backend._model
        params = sum(p.numel() for p in model.parameters())
        args._model = qwen_summary(model, backend, yes_no)
        padded, mean_len = prompt_tokens(backend, yes_no)
        backend.yes_probability(yes_no)                      # warm-up
        reset_peak_memory(device)
        yes_s, probs = timed(lambda: backend.yes_probability(yes_no), device, args.batches)
        assert len(probs) == args.batch_size and all(0.0 <= p <= 1.0 for p in probs)
        rows = [{"task": "yes/no (localisation)", "backend": "transformers", "arch": args.arch,
                 "params_b": params / 1e9, "batch_size": args.batch_size, "prompt_tokens_padded": padded,
                 "prompt_tokens_mean": mean_len,
                 "new_tokens": 1, "batch_s": yes_s, "per_s": args.batch_size / yes_s, "tokens_per_s": None,
                 "peak_mem_gib": peak_memory_gib(device)}]
        write_partial("thi", args, rows, {"load_s": load_s, "model": args._model})
        if args.vqa_batches:
            padded, mean_len = prompt_tokens(backend, vqa)
            backend.generate(vqa[:2], max_new_tokens=2)       # warm-up
            # a random model says EOS only by chance: make every answer exactly max_new_tokens long
            model.generation_config.min_new_tokens = args.max_new_tokens
            reset_peak_memory(device)
            vqa_s, answers = timed(lambda: backend.generate(vqa, max_new_tokens=args.max_new_tokens), device,
                                   args.vqa_batches)
            assert len(answers) == args.batch_size
            rows.append({"task": "VQA answer", "backend": "transformers", "arch": args.arch,
                         "params_b": params / 1e9, "batch_size": args.batch_size, "prompt_tokens_padded": padded,
                 "prompt_tokens_mean": mean_len,
                         "new_tokens": args.max_new_tokens, "batch_s": vqa_s, "per_s": args.batch_size / vqa_s,
                         "tokens_per_s": args.batch_size * args.max_new_tokens / vqa_s,
                         "peak_mem_gib": peak_memory_gib(device)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(args, rows, load_s)


def finish(args, rows: list[dict], load_s: float) -> dict:
    columns = [("task", "task"), ("params_b", "params (B)"), ("batch_size", "batch"),
               ("prompt_tokens_padded", "prompt tokens (padded)"), ("new_tokens", "new tokens"),
               ("batch_s", "s / batch"), ("per_s", "decisions or answers / s"), ("tokens_per_s", "new tokens/s"),
               ("peak_mem_gib", "peak GiB")]
    return report("thi", args, rows, columns,
                  title=f"bench/thi.py: random Qwen2-VL ({args.arch}), {args.backend} backend, "
                        f"{args.image_size}x{args.image_size} images",
                  extra={"load_s": load_s, "model": getattr(args, "_model", None),
                         "reference": {"qwen2vl_7b_h100_transformers_yes_no_per_s_at_64": 120}})


if __name__ == "__main__":
    main()
