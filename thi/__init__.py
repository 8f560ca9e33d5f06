"""THI: test-time human-centred interaction (docs/METHOD.md §7), re-ranking a trained run with a multimodal LLM.

    python -m thi --run RUN_DIR --model_dir QWEN2_VL_DIR          # see thi/cli.py for the options
    python -m thi.merge_lora --base QWEN2_VL_DIR --lora LORA_DIR --out MERGED_DIR

The MLLM itself (backends, answer cache, shards, chat formatting, the VQA + aggregation step) is the mllm/
package, which RDA builds on too.

cli.py           the command line: one run folder in, tables and JSON lines out
merge_lora.py    a LoRA adapter merged into a full model folder
prompts.py       the localisation question (the yes/no asked of each candidate)
interaction.py   candidates, rounds and gate; VQA and aggregation on the anchor (mllm.vqa)
rerank.py        the trained model's similarity of refined queries, S_final
sft_data.py      SFT data for the localisation question from a run's training split
sft/             LoRA fine-tuning on that data (python -m thi.sft)
"""
