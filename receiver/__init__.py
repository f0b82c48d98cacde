"""osma-router: receive signed Osma webhooks, dedupe, queue, and route to handlers.

What a handler plugin imports from here is all there is to the plugin API: the built-in
handlers (`handlers/`) use nothing else, and `tests/test_exported_members.py` pins the
list. The modules behind these names may move; these names stay.
"""

from .exceptions import (
    ConfigError,
    HandlerError,
    InvalidRequest,
    PayloadError,
    PermanentError,
    RateLimited,
    Rejected,
    RouterError,
    Unavailable,
    UpstreamError,
    VerificationError,
)
from .model.events import Event, parse_time
from .model.plugins import HandlerGroup
from .store.ledger import Effect, EffectOutcome, EffectResult, EffectsLedger
from .store.watermarks import Watermarks
from .upstream.osma import validate_metadata
from .worker.context import Context

__all__ = [
    "ConfigError",
    "Context",
    "Effect",
    "EffectOutcome",
    "EffectResult",
    "EffectsLedger",
    "Event",
    "HandlerError",
    "HandlerGroup",
    "InvalidRequest",
    "PayloadError",
    "PermanentError",
    "RateLimited",
    "Rejected",
    "RouterError",
    "Unavailable",
    "UpstreamError",
    "VerificationError",
    "Watermarks",
    "parse_time",
    "validate_metadata",
]
