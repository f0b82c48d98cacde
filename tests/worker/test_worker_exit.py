"""A worker leaves promptly: `worker --burst` on an empty queue, and any worker on
shutdown, must not wait on its pub/sub listener.

RQ listens to its command channel with a 60 s `sleep_time`. redis-py 8.2 made stopping
the listener join it without a timeout, and RQ unsubscribes just before stopping it: when
the listener reads the unsubscribe confirmation in between, it waits for a new
subscription for the whole `sleep_time`. Seen in CI as a `worker --burst` that took 60 s.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

from receiver.model.plugins import HandlerRegistry
from receiver.settings import Settings
from receiver.worker.execution import WorkerRuntime
from receiver.worker.runner import RouterWorker, run_worker
from tests.support import env_for

RUNS = 50
PROMPT = 5.0  # seconds; an exit takes a few ms, the hang took 60 s


class Hung(Exception):
    pass


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Interrupt the main thread (where RQ wants to run: it installs signal handlers)."""

    def expire(signum: int, frame: object) -> None:
        raise Hung

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_burst_workers_on_an_empty_queue_exit_promptly_every_time(redis_server, redis: Redis):
    settings = Settings.from_env(env_for(redis_server.url), env_file=None)
    runtime = WorkerRuntime.build(settings, redis, HandlerRegistry.discover())
    for run in range(1, RUNS + 1):
        started = time.monotonic()
        try:
            with watchdog(PROMPT):
                run_worker(runtime, ["osma-router"], burst=True)
        except Hung:
            raise AssertionError(
                f"burst worker {run} of {RUNS} had not exited after {time.monotonic() - started:.1f} s "
                f"on an empty queue (expected well under {PROMPT:g} s): its pub/sub listener is waiting"
            ) from None


def test_stopping_the_listener_after_it_saw_the_unsubscribe_does_not_wait(redis: Redis):
    """The racy order, made certain: the listener reads the unsubscribe confirmation before
    the worker stops it (under CPU contention this happened in about one exit in ten)."""
    worker = RouterWorker(["osma-router"], connection=redis)
    worker.subscribe()
    worker.pubsub.unsubscribe()
    time.sleep(0.3)  # the listener reads the confirmation and waits for a new subscription
    started = time.monotonic()
    try:
        with watchdog(PROMPT):
            worker.unsubscribe()
    except Hung:
        raise AssertionError(
            f"stopping the pub/sub listener took over {PROMPT:g} s (RQ's listener waits up to its "
            "sleep_time for a new subscription); expected about a second at most"
        ) from None
    assert time.monotonic() - started < PROMPT
