"""The question THI asks the MLLM about each candidate (docs/METHOD.md §7.1, step 1).

The LoRA SFT data (docs/METHOD.md §7.3) must use LOCALISATION_PROMPT as written here: the adapter
learns to answer this exact question.  The human-centred VQA and aggregation prompts, which RDA asks too, are in
mllm/vqa.py; the system prompt is mllm.backends.SYSTEM_PROMPT.
"""
from __future__ import annotations

LOCALISATION_PROMPT = (
    'Description: "{caption}"\n'
    "Does this description accurately describe the person in the image? Answer Yes or No.")


def localisation_prompt(caption: str) -> str:
    return LOCALISATION_PROMPT.format(caption=caption.strip())
