#!/usr/bin/env bash
# THI (ICL's test-time interaction): edit the variables, then `bash run_vllm_ICL.sh` (extra options are passed on).
# Over several GPUs the queries are split into one shard per engine (data parallel, mllm/shards.py), then merged.
set -euo pipefail
RUN_DIR=logs/CUHK-PEDES/20261123_101500_RDE   # a run folder written by main.py (single model or --twin)
MLLM_DIR=Qwen2-VL-7B-Instruct                 # the base model, or a folder merged by python -m thi.merge_lora
LORA_DIR=                                     # ICL's LoRA adapter folder; empty: none (or already merged)
BACKEND=vllm                                  # vllm (GPU, pip install vllm) or transformers
GPUS=${CUDA_VISIBLE_DEVICES:-0}               # e.g. 0,1,2,3: one engine per TP GPUs, each on its own queries
TP=1                                          # GPUs per engine (tensor parallel; 1 for a 7B model)
ROUNDS=5                                      # K
XI=                                           # empty: 0.55 on ICFG-PEDES, 0.5 elsewhere
LAM=0.8
MAX_MODEL_LEN=4096                            # unset, vLLM plans for the 32k context and a 7B model OOMs on 24 GB
GPU_MEMORY_UTILIZATION=0.85
MAX_NUM_SEQS=                                 # empty: vLLM's default; lower it if a 24 GB card runs out of memory
PIXELS=50176                                  # 224 x 224

thi() {
    python -m thi \
        --run "$RUN_DIR" \
        --model_dir "$MLLM_DIR" \
        ${LORA_DIR:+--lora "$LORA_DIR"} \
        --backend "$BACKEND" \
        --rounds $ROUNDS \
        ${XI:+--xi $XI} \
        --lam $LAM \
        --max_model_len $MAX_MODEL_LEN \
        --gpu_memory_utilization $GPU_MEMORY_UTILIZATION \
        ${MAX_NUM_SEQS:+--max_num_seqs $MAX_NUM_SEQS} \
        --tensor_parallel_size $TP \
        --min_pixels $PIXELS --max_pixels $PIXELS \
        "$@"
}

IFS=, read -ra gpu_list <<< "$GPUS"
shards=$(( ${#gpu_list[@]} / TP ))
if (( shards <= 1 )); then
    CUDA_VISIBLE_DEVICES=$GPUS thi "$@"
    exit
fi
pids=()
for (( k = 0; k < shards; k++ )); do
    devices=$(IFS=,; echo "${gpu_list[*]:k * TP:TP}")
    console="$RUN_DIR/thi_shard$k-of-$shards.console.txt"   # progress bars and errors; the log: thi_log.shard*.txt
    echo "shard $k/$shards on GPU(s) $devices: $console"
    CUDA_VISIBLE_DEVICES=$devices thi --shard "$k/$shards" "$@" > "$console" 2>&1 &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if (( failed )); then
    echo "a shard failed (see $RUN_DIR/thi_shard*.console.txt); the answers so far are cached: run this again" >&2
    exit 1
fi
thi "$@"   # every answer is cached now: metrics, queries.jsonl and final_similarity.pt for all queries
