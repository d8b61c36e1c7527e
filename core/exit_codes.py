"""Exit statuses of ``atelier up`` and ``atelier worker``: how a run ended, for systemd, Docker or a shell."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in the README ("How `atelier up` stops")."""

    OK = 0  # stopped on request; every running job finished within the grace
    ERROR = 1  # could not start (Redis unreachable, bad settings) or crashed
    USAGE = 2  # bad command line (argparse's own code)
    CHILD_DIED = 3  # the API, or the Redis `atelier up` started, exited on its own; the rest was stopped
    # stopped on request, but a job outlived the grace (requeued or failed) or a child had to be killed
    JOBS_INTERRUPTED = 4
