"""Stopping a training cleanly: SIGTERM (a scheduler preempting the job; SLURM sends it before SIGKILL) and
SIGINT (Ctrl-C) only ask the loop to stop at its next step boundary, where it writes a checkpoint that --resume
continues exactly.  A second signal of the same kind acts as it normally would (Ctrl-C twice: KeyboardInterrupt).

Imports nothing of the project.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Within `with StopSignals() as stop:`, `stop.signum` is the first SIGTERM / SIGINT received (None until
    then).  Outside the main thread signals cannot be caught: nothing is installed, the default stays."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
