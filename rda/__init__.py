"""RDA: reorganisation data augmentation of the training captions with a multimodal LLM (docs/METHOD.md §8).

    python -m rda --config configs/demo.yaml --model_dir QWEN2_VL_DIR --out reid_raw_rda.json
    python main.py --config configs/demo.yaml --anno_path reid_raw_rda.json     # trains with ICL's RDA TAL term

cli.py        the command line: a dataset in, its annotation file with diversity_captions out
pipeline.py   the steps over every pair: enrichment (mllm.vqa: THI's VQA + aggregation), decomposition, rewriting
prompts.py    the decomposition and rewriting prompts (the enrichment's are mllm/vqa.py's, shared with THI)
parsing.py    list replies read, mangled replies told apart
"""
