"""The question THI asks the MLLM about each candidate (docs/METHOD.md §7.1, step 1), and the one the dataset audit
asks about a training pair (audit.py --mllm, pair_audit/second_opinion.py).

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


# The audit's second opinion: does a training caption describe its own image?  Stricter than THI's question (which
# picks the described person among candidates): a caption is wrong for its image when any detail it gives is.
AUDIT_PROMPT = (
    'Description: "{caption}"\n'
    "Is every detail of this description (gender, clothing, colours, what the person carries) true of the person "
    "in the image? Answer Yes or No.")


def audit_prompt(caption: str) -> str:
    return AUDIT_PROMPT.format(caption=caption.strip())
