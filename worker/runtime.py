"""Per-process model state of a worker.

The VGG19 weights are loaded once, in the worker's main process, onto the CPU and *before* any job
is forked: every work horse shares them copy-on-write, and CUDA is never touched before the fork
(a forked child cannot use a CUDA context its parent created). On a GPU machine each horse moves the
already-loaded weights to the device: a memory copy, not a reload from disk.
"""

from __future__ import annotations

import logging
import signal

import torch

from core.parent_death import die_with_parent
from models.vgg import VGG19Features, load_vgg19

log = logging.getLogger(__name__)

_vgg: VGG19Features | None = None
_job_threads: int = 0


def prepare_for_fork(job_threads: int) -> None:
    """Keep the parent single-threaded so forked horses can start their own thread pools.

    GNU OpenMP is not fork-safe: if the parent ever ran a parallel torch op (dequantizing VGG19 does),
    the first parallel op in a forked child deadlocks. With one thread no pool is created, and each
    horse switches to ``job_threads`` (0: torch's default, the number of cores) when its job starts.
    """
    global _job_threads
    _job_threads = job_threads or torch.get_num_threads()
    torch.set_num_threads(1)


def enter_job() -> None:
    """Called first thing in a work horse: die with the parent, restore the parent's threads.

    RQ puts each horse in its own session, so killing the worker (SIGKILL, OOM) would leave the horse
    running as an orphan whose job the queue has already declared failed. Asking the kernel to kill
    the horse when its parent dies keeps the job's recorded state true.
    """
    _die_with_parent()
    if _job_threads:
        torch.set_num_threads(_job_threads)


def _die_with_parent() -> None:
    """SIGKILL: the worker has already given up on this job when it dies, so nothing is left to save."""
    die_with_parent(signal.SIGKILL)


def preload(last_layer: str = "relu5_4") -> VGG19Features:
    """Load VGG19 for this process (idempotent). Deep enough for any layer a job may ask for."""
    global _vgg
    if _vgg is None:
        _vgg = load_vgg19(last_layer=last_layer)
        log.info("VGG19 loaded up to %s", last_layer)
    return _vgg


def resolve_device(preference: str) -> torch.device:
    """``auto`` picks CUDA when present; call only inside a job (after the fork)."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def vgg_on(device: torch.device) -> VGG19Features:
    """The preloaded network on ``device`` (loaded here if the process skipped preloading)."""
    vgg = preload()
    return vgg if device.type == "cpu" else vgg.to(device)
