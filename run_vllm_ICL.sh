#!/usr/bin/env bash
# THI (ICL's test-time interaction): edit the variables, then `sh run_vllm_ICL.sh` (extra options are passed on).
RUN_DIR=logs/CUHK-PEDES/20261123_101500_RDE   # a run folder written by main.py (single model or --twin)
MLLM_DIR=Qwen2-VL-7B-Instruct                 # the base model, or a folder merged by python -m thi.merge_lora
LORA_DIR=                                     # ICL's LoRA adapter folder; empty: none (or already merged)
BACKEND=vllm                                  # vllm (GPU, pip install vllm) or transformers
ROUNDS=5                                      # K
XI=                                           # empty: 0.55 on ICFG-PEDES, 0.5 elsewhere
LAM=0.8
MAX_MODEL_LEN=4096                            # unset, vLLM plans for the 32k context and a 7B model OOMs on 24 GB
GPU_MEMORY_UTILIZATION=0.85
MAX_NUM_SEQS=32
PIXELS=50176                                  # 224 x 224

CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python -m thi \
    --run "$RUN_DIR" \
    --model_dir "$MLLM_DIR" \
    ${LORA_DIR:+--lora "$LORA_DIR"} \
    --backend "$BACKEND" \
    --rounds $ROUNDS \
    ${XI:+--xi $XI} \
    --lam $LAM \
    --max_model_len $MAX_MODEL_LEN \
    --gpu_memory_utilization $GPU_MEMORY_UTILIZATION \
    --max_num_seqs $MAX_NUM_SEQS \
    --min_pixels $PIXELS --max_pixels $PIXELS \
    "$@"
