"""LoRA fine-tuning of the MLLM on THI's localisation question (python -m thi.sft; cli.py has the commands and the
recipe).

    examples.py        the (question, answer) pairs of a thi.sft_data folder
    encoding.py        examples -> model inputs through THI's chat code, labels on the answer tokens only
    loss.py            the answer tokens' cross-entropy
    lora.py            the base model and its LoRA adapter
    checkpointing.py   checkpoint-STEP/ folders written atomically and read back for --resume
    training.py        the training loop, its data order and schedule
    cli.py             the command line
"""
from .checkpointing import RESUME_KEYS, checkpoints, load_checkpoint, save_checkpoint, truncate_log
from .cli import main, parse
from .encoding import END_OF_TURN, IGNORE, Encoder
from .examples import Example, read_examples
from .lora import LORA_TARGETS, VISION_TOWER, add_lora, load_base
from .loss import answer_loss, mean_answer_loss
from .training import step_batches, steps_per_epoch, train

__all__ = ["END_OF_TURN", "IGNORE", "LORA_TARGETS", "RESUME_KEYS", "VISION_TOWER", "Encoder", "Example", "add_lora",
           "answer_loss", "checkpoints", "load_base", "load_checkpoint", "main", "mean_answer_loss", "parse",
           "read_examples", "save_checkpoint", "step_batches", "steps_per_epoch", "train", "truncate_log"]
