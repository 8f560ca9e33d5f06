"""Progress bars on a terminal only.

A bar redraws itself with a carriage return (and cursor-movement escape codes for nested bars) several times a
second.  On a terminal that is one line that moves; redirected to a file (`python main.py ... > demo.log 2>&1`,
nohup, a cluster's job log) every redraw stays, and a short demo left a 73 KB log of them.  There the logs
already say what matters once per step that matters (one line per epoch, per division, per THI round), so the
bars are left out, as tqdm does itself for `disable=None`.
"""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(iterable=None, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), drawn only when `enabled` and its stream (stderr by default) is a terminal."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)


def library_bars_follow_terminal() -> None:
    """Turn off the bars of transformers and huggingface_hub ('Loading weights', downloads) when stderr is not
    a terminal; they draw regardless of where their output goes.  Call it at the start of a command.

    HF_HUB_DISABLE_PROGRESS_BARS is what both libraries read when first imported (and what the model loading
    subprocesses inherit); a value the user set is left alone.
    """
    isatty = getattr(sys.stderr, "isatty", None)
    if (isatty is not None and isatty()) or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:  # imported already: the variable was read, tell it directly
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
