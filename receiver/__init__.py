"""osma-router: receive signed Osma webhooks, dedupe, queue, and route to handlers.

What a handler plugin imports from here is all there is to the plugin API.
"""

from .context import Context
from .events import Event
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
from .plugins import HandlerGroup

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
