"""LoRA fine-tuning of the MLLM on THI's localisation question (docs/METHOD.md §7.3), in the project:

    python -m thi.sft_data --run RUN_DIR --out SFT_DATA
    python -m thi.sft --data SFT_DATA --model_dir Qwen2-VL-7B-Instruct --out LORA_DIR
    python -m thi --run RUN_DIR --model_dir Qwen2-VL-7B-Instruct --lora LORA_DIR

ICL's recipe by default: LoRA rank 8, alpha 16 on the language model's attention and MLP projections (the
vision tower stays frozen), lr 5e-5, 2 epochs, batch 4 x gradient accumulation 16, cosine schedule with 10%
warm-up; bf16 on a GPU, fp32 on CPU.  The loss is the cross-entropy of the answer tokens only ("Yes"/"No" and
the end of turn): the prompt is context, not a target.  Prompts and images go through THI's own chat code
(mllm/backends/chat.py), so the model is trained on exactly the input THI shows it at inference.

LORA_DIR gets the final adapter (peft format: what --lora and python -m thi.merge_lora read), sft_args.json,
sft_log.txt, loss.jsonl (one line per optimizer step) and checkpoint-STEP/ folders (adapter, optimizer,
scheduler, step) every --save_steps and at the end; --resume continues from the last one.
"""
from __future__ import annotations

import argparse
import sys

from mllm.backends import DEFAULT_PIXELS
from utils.safe_load import add_trust_flag, command
from .training import train


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m thi.sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by python -m thi.sft_data (or its thi_sft.json)")
    p.add_argument("--model_dir", required=True, help="the base Qwen2-VL model folder")
    p.add_argument("--out", required=True, help="output folder: the adapter, checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora_rank", type=int, default=8)
    lora.add_argument("--lora_alpha", type=int, default=16)
    # LLaMA-Factory's default, which ICL trained with
    lora.add_argument("--lora_dropout", type=float, default=0.0)
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=5e-5)
    opt.add_argument("--epochs", type=int, default=2)
    opt.add_argument("--max_steps", type=int, help="stop after this many optimizer steps (default: the epochs')")
    opt.add_argument("--batch_size", type=int, default=4, help="examples per forward pass")
    opt.add_argument("--grad_accum", type=int, default=16, help="forward passes per optimizer step")
    opt.add_argument("--lr_scheduler", choices=["cosine", "linear", "constant_with_warmup"], default="cosine")
    opt.add_argument("--warmup_ratio", type=float, default=0.1, help="warm-up steps as a fraction of all steps")
    opt.add_argument("--weight_decay", type=float, default=0.0)
    opt.add_argument("--max_grad_norm", type=float, default=1.0)
    opt.add_argument("--seed", type=int, default=0, help="LoRA initialisation and data order")
    opt.add_argument("--gradient_checkpointing", action="store_true", help="less GPU memory, slower steps")
    p.add_argument("--save_steps", type=int, default=200, help="optimizer steps between checkpoints")
    p.add_argument("--save_total_limit", type=int, default=2, help="checkpoints kept (0: all)")
    p.add_argument("--log_steps", type=int, default=10, help="optimizer steps between log lines")
    p.add_argument("--eval_examples", type=int, default=64,
                   help="log the answer loss on this many fixed examples before and after training (0: skip)")
    p.add_argument("--min_pixels", type=int, default=DEFAULT_PIXELS, help="image size range, as given to THI")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_PIXELS)
    p.add_argument("--device", help="default: cuda if there is one")
    add_trust_flag(p)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on a GPU")
    args = p.parse_args(argv)
    for name in ("lora_rank", "epochs", "batch_size", "grad_accum", "save_steps", "log_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        p.error("--max_steps must be at least 1")
    return args


def main(argv=None) -> dict:
    """python -m thi.sft: trains (training.train, which says what it returns)."""
    with command(list(sys.argv[1:] if argv is None else argv)) as argv:
        return train(parse(argv))
