"""Children that die with their parent, so a SIGKILLed supervisor never leaves orphans behind.

Linux delivers a chosen signal to a process when the thread that created it exits
(``prctl(PR_SET_PDEATHSIG)``). The request survives ``exec``, so ``python -m core.parent_death PID
-- CMD ...`` arms it and then becomes CMD: that is how ``atelier up`` starts a program it did not
write (redis-server) without running Python code between ``fork`` and ``exec``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
SUPERVISOR_PID_ENV = "ATELIER_SUPERVISOR_PID"


def die_with_parent(sig: int = signal.SIGTERM, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` when our parent dies; exit now if it is already gone.

    Returns False where the platform has no such request (then only the caller's own checks help).
    ``expected_parent`` closes the race where the parent died before the request took effect.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
            return False
        armed = True
    else:
        armed = False
    parent = os.getppid()
    if parent == 1 or (expected_parent is not None and parent != expected_parent):
        os._exit(1)
    return armed


def take_supervisor_pid() -> int | None:
    """The PID of the ``atelier up`` that started this process, if any (read once, not inherited further)."""
    raw = os.environ.pop(SUPERVISOR_PID_ENV, "")
    return int(raw) if raw.isdigit() else None


def _exec_with_parent_death(argv: list[str]) -> None:
    """``python -m core.parent_death PARENT_PID -- CMD ARGS``: arm SIGTERM-on-parent-death, then exec CMD."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        raise SystemExit("usage: python -m core.parent_death PARENT_PID -- CMD [ARGS...]")
    die_with_parent(signal.SIGTERM, expected_parent=int(argv[0]))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    _exec_with_parent_death(sys.argv[1:])
