"""Every error osma-router raises on purpose is a subclass of `RouterError`.

```
RouterError
├── ConfigError            bad settings or routes file: refuse to start
├── HTTPFacingError         answered with a status code and {"error": {"type", "message"}}
│   ├── VerificationError  signature / timestamp / Osmos auth header: 401, never retried
│   │   └── Unauthorized
│   ├── PayloadError       body not JSON, missing id/type, schema mismatch: 4xx
│   │   ├── InvalidRecords         422, Osmos records that break the schema (names them)
│   │   ├── UnsupportedMediaType   415
│   │   └── TooManyRecords         413
│   ├── BodyTooLarge       413, counted while the body streams in
│   ├── RequestTimeout     408, the body did not arrive in time
│   ├── UnknownConnector   404
│   └── StoreUnavailable   503: Redis could not store it, the sender retries
│       └── OverBudget     503 with Retry-After: an Osmos batch would pass the Redis budget for batches
├── StoreError             Redis could not store an event or a batch: the endpoint answers 503
│   └── StagingLost        an Osmos batch being stored was discarded as abandoned (its receiver stalled)
├── NoSuchFailedJob        `failed show/retry` of an id that is not in the failed registry
├── HandlerFailed          a job `deliver()` ran in a test failed (the handler's error is its cause)
├── HandlerError           a plugin failed: retried per its policy
│   ├── ClaimHeld          another execution holds an effect's lock: run again when it expires
│   ├── LockLost           this execution's lock expired while it was frozen: stop, record nothing
│   └── PermanentError     a plugin says retrying cannot help: failed at once
│       ├── InvalidRequest       a request a client refuses to send (metadata over Osma's limits, ...)
│       └── UpstreamNotConfigured  a handler needs a client whose settings are missing (a ConfigError too)
└── UpstreamError          Osma / OGSM answered badly
    ├── Unavailable        5xx, timeout, connection refused: retry with backoff
    ├── RateLimited        429: retry after Retry-After
    └── Rejected           other 4xx: do not retry, dead-letter with the body
```

Each HTTP-facing error carries the `type` string of the error table (docs/contract.md), so the
receiver turns any of them into `{"error": {"type": ..., "message": ...}}` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson


class RouterError(Exception):
    """Base of every osma-router error."""


class ConfigError(RouterError):
    """A setting, the routes file or a plugin is wrong; the process must not start."""


class HTTPFacingError(RouterError):
    """An error the receiver answers with a status code and a classified JSON body."""

    status_code = 400
    error_type = "bad_request"

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type


class VerificationError(HTTPFacingError):
    """The `osma-signature` header is missing, malformed, stale or does not match."""

    status_code = 401


class PayloadError(HTTPFacingError):
    """The verified body is not an acceptable event or batch."""

    status_code = 400


class Unauthorized(VerificationError):
    """An Osmos connector's auth header is missing or wrong."""

    error_type = "unauthorized"


class InvalidRecords(PayloadError):
    """Osmos records break the schema, or the body is not an object or an array of objects.

    `records` are the bad fields as JSON objects (`{"index", "field", "message"}`), at most
    1,000 of them; `more` counts the rest. Nothing of the batch was stored.
    """

    status_code = 422
    error_type = "invalid_records"

    def __init__(self, message: str, records: Sequence[Mapping[str, Any]], more: int = 0) -> None:
        super().__init__(message)
        self.records = list(records)
        self.more = more

    def body(self) -> bytes:
        answer: dict[str, Any] = {
            "error": {"type": self.error_type, "message": self.message},
            "records": self.records,
        }
        if self.more:
            answer["more"] = self.more
        return orjson.dumps(answer)


class UnsupportedMediaType(PayloadError):
    status_code = 415
    error_type = "unsupported_media_type"


class TooManyRecords(PayloadError):
    status_code = 413
    error_type = "too_many_records"


class BodyTooLarge(HTTPFacingError):
    status_code = 413
    error_type = "body_too_large"


class RequestTimeout(HTTPFacingError):
    status_code = 408
    error_type = "request_timeout"


class UnknownConnector(HTTPFacingError):
    status_code = 404
    error_type = "unknown_connector"


class StoreUnavailable(HTTPFacingError):
    """Redis is unreachable or failing; nothing was acknowledged."""

    status_code = 503
    error_type = "unavailable"


class OverBudget(StoreUnavailable):
    """An Osmos batch would take Redis past its memory budget for batches; refused before
    anything is stored, with a `Retry-After` of `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(RouterError):
    """Redis could not store an event or a batch (refused, went away, timed out)."""


class StagingLost(StoreError):
    """An Osmos batch being stored was discarded as abandoned (its receiver stalled past the
    deadline): nothing of it is queued; answer 503."""


class NoSuchFailedJob(RouterError):
    """No failed job has that id."""


class HandlerFailed(RouterError):
    """A job that `deliver()` ran failed: raised in the test, from the handler's own exception
    (`__cause__`, with its traceback).

    `handler`, `event_id` (None for the service's own jobs), `attempt` of `attempts` (None
    when the job does not say), `error_type` and `error_message` of the original exception;
    `others`: how many more of the delivery's jobs failed.
    """

    def __init__(
        self,
        *,
        handler: str,
        event_id: str | None,
        attempt: int,
        attempts: int | None,
        error_type: str,
        error_message: str,
        others: int = 0,
    ) -> None:
        of = f"/{attempts}" if attempts else ""
        event = f"event {event_id}" if event_id else "its scheduled job"
        more = f" (and {others} more job{'s' if others != 1 else ''} failed)" if others else ""
        super().__init__(
            f"handler {handler} failed on {event}, attempt {attempt}{of}: {error_type}: {error_message}{more}"
        )
        self.handler = handler
        self.event_id = event_id
        self.attempt = attempt
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        self.others = others


class HandlerError(RouterError):
    """A handler failed; the job is retried according to its route's policy."""


class ClaimHeld(HandlerError):
    """Another execution holds the lock an effect needs: the job runs again once it expires
    (`retry_after` seconds), without using up one of its attempts."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LockLost(HandlerError):
    """This execution's lock expired while it was stopped (frozen past the lock TTL): it makes
    no further upstream call and records nothing; the execution holding the lock now does."""


class PermanentError(HandlerError):
    """A handler failed in a way retrying cannot fix; the job goes to the failed registry."""


class InvalidRequest(PermanentError):
    """A request the Osma or OGSM client refuses to send, because the API would refuse it."""


class UpstreamNotConfigured(PermanentError, ConfigError):
    """A handler asked for the Osma or OGSM client, but its settings are not there."""


class UpstreamError(RouterError):
    """Osma or OGSM answered badly."""

    def __init__(self, message: str, *, status_code: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class Unavailable(UpstreamError):
    """5xx, timeout or refused connection: retried with backoff."""


class RateLimited(UpstreamError):
    """429: retried, but not before `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Rejected(UpstreamError):
    """Another 4xx: retrying cannot help; the job is dead-lettered with the body."""


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed job should be tried again (docs/contract.md, "Retries")."""
    return not isinstance(exc, (Rejected, PermanentError, ConfigError, PayloadError))
