"""The base Qwen2-VL and its LoRA adapter: the language model's attention and MLP projections, the vision tower
frozen (ICL's recipe)."""
from __future__ import annotations

import os

import torch

from mllm.backends.hf import disable_cudnn_attention

# the language model's projections in Qwen2-VL; the vision tower (model.visual) is left out by name, since
# Qwen2.5-VL's vision MLP reuses gate/up/down_proj
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_TOWER = r".*\bvisual\b.*"


def load_base(model_dir: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise SystemExit(f"--model_dir {model_dir}: no config.json there; expected a Qwen2-VL model folder")
    disable_cudnn_attention(device)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype)
    return model.to(device), processor


def add_lora(model, rank: int, alpha: int, dropout: float, targets=LORA_TARGETS):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        exclude_modules=VISION_TOWER, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
