"""An idle worker leaves promptly when told to stop: its command-channel thread must not hold it up."""

from __future__ import annotations

import threading
import time

from redis import Redis
from rq import Queue

from tests.conftest import RUN_ID
from worker.main import AtelierWorker


def test_unsubscribe_is_prompt_even_when_the_reply_wakes_the_reader_first(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    worker = AtelierWorker(
        [Queue(f"atelier-test-{RUN_ID}-unsubscribe", connection=redis)],
        connection=redis,
        name=f"atelier-test-{RUN_ID}-unsubscribe",
    )
    worker.subscribe()
    time.sleep(0.3)  # the reader thread is now blocked reading the channel
    send_unsubscribe = worker.pubsub.unsubscribe

    def unsubscribe_then_yield(*args):
        """As on a busy CPU: the reply reaches the reader before RQ gets to stop the thread."""
        sent = send_unsubscribe(*args)
        time.sleep(0.3)
        return sent

    worker.pubsub.unsubscribe = unsubscribe_then_yield
    teardown = threading.Thread(target=worker.unsubscribe, daemon=True)
    started = time.monotonic()
    teardown.start()
    teardown.join(timeout=5)
    assert not teardown.is_alive(), "unsubscribe still waiting for the channel thread after 5 s"
    assert time.monotonic() - started < 5
    assert not worker.pubsub_thread.is_alive()
