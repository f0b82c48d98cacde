"""Test helpers shipped for handler authors: fake Osma and OGSM servers that run on a
loopback port, and a pytest plugin (`receiver.testing.pytest_plugin`, registered as the
`osma_router` pytest11 entry point) with fixtures built on them. `deliver(event)` answers a
`Delivery` (its jobs are `JobRun`s) and raises `HandlerFailed` when a job failed."""

from ..exceptions import HandlerFailed
from .delivery import Delivery, JobError, JobRun
from .events import task_event
from .fake_ogsm import FakeOgsm
from .fake_osma import FakeOsma
from .fake_service import RecordedRequest
from .server import LiveServer

__all__ = [
    "Delivery",
    "FakeOgsm",
    "FakeOsma",
    "HandlerFailed",
    "JobError",
    "JobRun",
    "LiveServer",
    "RecordedRequest",
    "task_event",
]
