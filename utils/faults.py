"""Fault injection for the tests, all in one place (tests/test_safety.py, test_training.py, test_distributed.py,
test_audit.py):
an environment variable names the point where a fault happens, and nothing here does anything when none is set.

    REID_CRASH_AT=POINT       the process kills itself (kill -9) at POINT
    REID_WAIT_AT=POINT        training pauses at POINT until a stop signal arrives, so a test's signal lands there
    REID_NAN_AT=epochE:stepS  that training step's loss turns NaN (solver/hooks.py FaultInjection)
    REID_DISK_FULL_AT=POINT   the checkpoint write at POINT finds the disk full (utils/checkpoint.py atomic_save)

Points: epochE:mid (after half the epoch's steps), epochE:logging (after the epoch's checkpoints, before its
metrics line), epochE:FILE (a checkpoint file written, e.g. epoch2:last.pth); audit.py's audit:scored and
audit:identity (a stage saved).  Under torchrun, "rankN:POINT" limits the fault to the process of rank N.  The training loop itself holds none of this: its steps reach the
tests' faults through one hook, added only when a variable is set (solver/build.py, solver/hooks.py).

Imports nothing of the project.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

VARIABLES = ("REID_CRASH_AT", "REID_WAIT_AT", "REID_NAN_AT", "REID_DISK_FULL_AT")


def requested() -> bool:
    """Whether any fault is asked for in this process's environment."""
    return any(os.environ.get(v) for v in VARIABLES)


def injected(variable: str, name: str) -> bool:
    """Whether the environment variable names the point `name` (for this process's rank)."""
    return bool(name) and os.environ.get(variable) in (name, f"rank{os.environ.get('RANK', '0')}:{name}")


def crash_point(name: str) -> None:
    """REID_CRASH_AT=name: the process kills itself here, as kill -9 would."""
    if injected("REID_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def wait_point(name: str, stopped: Callable[[], bool], timeout: float = 120.0) -> None:
    """REID_WAIT_AT=name: pause here, saying so on stderr, until `stopped()` (a stop signal arrived)."""
    if not injected("REID_WAIT_AT", name):
        return
    print(f"waiting at {name} for a signal", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.01)
