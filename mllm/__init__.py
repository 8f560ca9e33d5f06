"""The multimodal LLM layer (Qwen2-VL) that THI (test-time re-ranking) and RDA (training caption augmentation)
both build on; it knows neither app.

backends/        the MLLM: transformers or vLLM behind yes_probability / generate; Request, the system prompt
backends/chat.py requests -> chat prompts and resized images, the same in both backends (and in thi.sft)
cache.py         answers on disk (resumable runs), batched asking with per-request failures
shards.py        data parallel runs: --shard K/N, one cache file per shard, merged by a run without --shard
vqa.py           human-centred VQA on a person image + aggregation with a caption (THI's anchor, RDA's enrichment)
"""
