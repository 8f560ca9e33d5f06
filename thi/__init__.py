"""THI: test-time human-centred interaction (METHOD.md section 7), re-ranking a trained run with a multimodal LLM.

    python -m thi --run RUN_DIR --model_dir QWEN2_VL_DIR          # see thi/cli.py for the options
    python -m thi.merge_lora --base QWEN2_VL_DIR --lora LORA_DIR --out MERGED_DIR

cli.py           the command line: one run folder in, tables and JSON lines out
merge_lora.py    a LoRA adapter merged into a full model folder
prompts.py       every text sent to the MLLM
backends/        the MLLM: transformers or vLLM behind yes_probability / generate
cache.py         answers on disk (resumable runs), batched asking with per-query failures
interaction.py   candidates, rounds and gate, VQA and aggregation
parsing.py       numbered answers and the refined query out of free text
rerank.py        the trained model's similarity of refined queries, S_final
"""
