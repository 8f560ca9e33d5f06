"""Merge a LoRA adapter into its Qwen2-VL base, giving a full model folder (for vLLM without enable_lora, or
to share one folder):

    python -m thi.merge_lora --base Qwen2-VL-7B-Instruct --lora ICL_LORA_DIR --out Qwen2-VL-7B-ICL
"""
from __future__ import annotations

import argparse
import os
import sys


def merge_lora(base: str, lora: str, out: str) -> str:
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    for folder, marker in ((base, "config.json"), (lora, "adapter_config.json")):
        if not os.path.isfile(os.path.join(folder, marker)):
            raise SystemExit(f"{folder}: no {marker} there")
    if os.path.abspath(out) in (os.path.abspath(base), os.path.abspath(lora)):
        raise SystemExit("--out must be a new folder: writing over --base or --lora would lose them")
    # the base's own dtype (bf16 for Qwen2-VL): merging does not need more, and the folder stays its size
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, lora).merge_and_unload()
    merged.save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    return out


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m thi.merge_lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model folder the adapter was trained on")
    p.add_argument("--lora", required=True, help="peft adapter folder (adapter_config.json + weights)")
    p.add_argument("--out", required=True, help="new folder for the merged model and the processor")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = merge_lora(args.base, args.lora, args.out)
    print(f"merged {args.lora} into {args.base}: {out}")
    return out


if __name__ == "__main__":
    main()
