"""Every text THI sends to the MLLM (METHOD.md section 7), in one place.

The LoRA SFT data (METHOD.md section 7, "LoRA SFT") must use LOCALISATION_PROMPT as written here: the adapter
learns to answer this exact question.
"""
from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."

LOCALISATION_PROMPT = (
    'Description: "{caption}"\n'
    "Does this description accurately describe the person in the image? Answer Yes or No.")

# Human-centred VQA: (short topic used when the answers are merged, question asked), in the asked order.
VQA_QUESTIONS = (
    ("gender", "What is the gender of the person?"),
    ("hair", "What are the length and the colour of the person's hair?"),
    ("upper clothing", "What colour and type is the upper-body clothing, and are its sleeves long or short?"),
    ("lower clothing", "What colour and type is the lower-body clothing, and how long is it?"),
    ("patterns", "Does the clothing have any pattern, such as stripes, checks, prints or logos?"),
    ("shoes", "What colour and type are the shoes?"),
    ("glasses", "Is the person wearing glasses?"),
    ("scarf", "Is the person wearing a scarf? If so, what colour?"),
    ("held items", "Is the person holding anything? If so, what is it and what colour?"),
    ("backpack", "Is the person carrying a backpack? If so, what colour?"),
    ("hat", "Is the person wearing a hat? If so, what colour?"),
    ("belt", "Is the person wearing a belt?"),
    ("action", "What is the person doing?"),
    ("background", "What is in the background?"),
    ("other people", "Are there other people in the image?"),
)

VQA_PROMPT = (
    "Answer each question about the person in the image with a few words, one line per answer, numbered like "
    "the questions (for example: 1. female). If something cannot be seen, answer: not visible.\n"
    + "\n".join(f"{i}. {question}" for i, (_, question) in enumerate(VQA_QUESTIONS, 1)))

AGGREGATION_PROMPT = (
    "Below are a description of a person and answers to questions about a photo of that person. Rewrite them "
    "as one concise description in continuous sentences: keep every detail of the description, add the details "
    "the answers give, and leave out answers that say something cannot be seen. Reply with the description "
    "only.\n"
    "Description: {caption}\n"
    "Answers:\n{answers}")


def localisation_prompt(caption: str) -> str:
    return LOCALISATION_PROMPT.format(caption=caption.strip())


def aggregation_prompt(caption: str, answers: dict[int, str], unnumbered: list[str]) -> str:
    """answers: question number (1-based) -> answer; unnumbered: answer lines whose question is unknown."""
    lines = [f"- {VQA_QUESTIONS[n - 1][0]}: {text}" for n, text in sorted(answers.items())]
    lines += [f"- {text}" for text in unnumbered]
    return AGGREGATION_PROMPT.format(caption=caption.strip(), answers="\n".join(lines))
