"""osma-router: receive signed Osma webhooks, dedupe, queue, and route to handlers.

What a handler plugin imports from here is all there is to the plugin API.
"""

from .exceptions import (
    ConfigError,
    HandlerError,
    PayloadError,
    PermanentError,
    RateLimited,
    Rejected,
    RouterError,
    Unavailable,
    UpstreamError,
    VerificationError,
)
from .model.events import Event
from .model.plugins import HandlerGroup
from .worker.context import Context

__all__ = [
    "ConfigError",
    "Context",
    "Event",
    "HandlerError",
    "HandlerGroup",
    "PayloadError",
    "PermanentError",
    "RateLimited",
    "Rejected",
    "RouterError",
    "Unavailable",
    "UpstreamError",
    "VerificationError",
]
