"""Stopping a training cleanly: SIGTERM (a scheduler preempting the job; SLURM sends it before SIGKILL) and
SIGINT (Ctrl-C) only ask the loop to stop at its next step boundary, where it writes a checkpoint that --resume
continues exactly.  A second signal of the same kind acts as it normally would (Ctrl-C twice: KeyboardInterrupt).

Imports nothing of the project.
"""
from __future__ import annotations

import signal
import sys
import threading
import time

from .run_folder import injected

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

    def wait_if_asked(self, name: str, timeout: float = 120.0) -> None:
        """Fault injection for the signal tests: REID_WAIT_AT=name pauses training here, saying so on stderr, until
        a signal arrives, so that the test's signal lands mid-epoch."""
        if not injected("REID_WAIT_AT", name):
            return
        print(f"waiting at {name} for a signal", file=sys.stderr, flush=True)
        deadline = time.monotonic() + timeout
        while not self.requested and time.monotonic() < deadline:
            time.sleep(0.01)

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
