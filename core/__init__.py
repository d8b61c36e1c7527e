"""What the API (``app/``) and the workers (``worker/``) share, so that neither imports the other.

Settings, the Redis connection and queue, the Redis key layout and job function names, the job
option payloads, the custom-style store, job previews, exit codes and the parent-death helper live
here; ``app`` and ``worker`` depend on ``core`` (and ``models``), never on each other; the one place
that composes both is the ``atelier`` command line (``app/cli.py`` starts a worker for ``atelier
worker``).
"""
