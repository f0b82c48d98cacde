"""Test helpers shipped for handler authors: fake Osma and OGSM servers that run on a
loopback port, and a pytest plugin (`receiver.testing.pytest_plugin`, registered as the
`osma_router` pytest11 entry point) with fixtures built on them."""

from .events import task_event
from .fake_ogsm import FakeOgsm
from .fake_osma import FakeOsma
from .fake_service import RecordedRequest
from .server import LiveServer

__all__ = ["FakeOgsm", "FakeOsma", "LiveServer", "RecordedRequest", "task_event"]
