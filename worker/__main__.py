"""``python -m worker``: one queue worker with the environment's settings."""

from worker.main import run_worker

raise SystemExit(run_worker())
