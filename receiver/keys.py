"""Every Redis key osma-router writes, in one place.

Our own keys start with `osma_router:`; RQ's (`rq:job:<id>`, `rq:queue:<name>`,
`rq:queues`) are written by the admission and batch scripts exactly as RQ names them.
Key names hold ids only (event ids, connector names, handler names), never member or task
data. `docs/operations.md` lists each key with what it holds and how long it lives.
"""

from __future__ import annotations

PREFIX = "osma_router"

# RQ's own names: the scripts write jobs and queues that an RQ worker then reads.
RQ_QUEUES_KEY = "rq:queues"
RQ_QUEUE_PREFIX = "rq:queue:"
RQ_JOB_PREFIX = "rq:job:"
RQ_RESULTS_PREFIX = "rq:results:"  # RQ's stream of a job's results (a failure's traceback)

# Captured deliveries: one stream, trimmed by age and count; duplicates in a stream of
# their own with its own bound, so a flood of them never evicts a first delivery.
CAPTURE_KEY = f"{PREFIX}:capture"
CAPTURE_DUPLICATES_KEY = f"{PREFIX}:capture:duplicates"

# Counters that workers write and every receiver's /metrics reads.
JOB_COUNTS_KEY = f"{PREFIX}:metrics:jobs"  # field "<handler>|<outcome>"
UPSTREAM_CALLS_KEY = f"{PREFIX}:metrics:upstream"  # field "<upstream>|<status>"
RATE_LIMIT_WAITS_KEY = f"{PREFIX}:metrics:rate_limit_waits"  # fields "<upstream>|waits", "|seconds"

# Deliveries per minute by outcome (the console's overview): one hash per minute.
ACTIVITY_PREFIX = f"{PREFIX}:activity:"
# Console sessions ended by "Log out" before their cookie expires (one key per session).
CONSOLE_LOGOUT_PREFIX = f"{PREFIX}:console:logout:"
# The most recent webhook events (the console's event list), capped by count.
RECENT_EVENTS_KEY = f"{PREFIX}:recent"

# Osmos batches: those being stored (with their deadlines), and the Redis memory each may take.
OSMOS_INFLIGHT_KEY = f"{PREFIX}:osmos:inflight"
OSMOS_RESERVED_KEY = f"{PREFIX}:osmos:reserved"

# The pattern `status` counts remembered event ids with (SCAN, never KEYS).
SEEN_PATTERN = f"{PREFIX}:seen:*"
SEEN_PREFIX = f"{PREFIX}:seen:"


def dedup_key(source: str, event_id: str) -> str:
    """The mark that an event id was accepted (event ids only: no payload data)."""
    return f"{SEEN_PREFIX}{source}:{event_id}"


def job_count_field(handler: str, outcome: str) -> str:
    return f"{handler}|{outcome}"


def osmos_seen_prefix(connector: str) -> str:
    """What a connector's dedup mark hashes are named after: `<this><time bucket>:<part>`,
    each field a record's id digest, its value when the mark expires (store/batch_scripts.py)."""
    return f"{PREFIX}:osmos:seen:{connector}:"


def osmos_holder_key(connector: str) -> str:
    """The one batch of a connector being stored right now (`<connector>:<batch id>`)."""
    return f"{PREFIX}:osmos:holder:{connector}"


def osmos_batch_prefix(member: str) -> str:
    """What the bookkeeping keys of a batch being stored start with (store/batch_scripts.py)."""
    return f"{PREFIX}:osmos:batch:{member}:"


def osmos_chunk_key(member: str, number: int) -> str:
    """One chunk of a stored batch's records, read by its jobs (store/osmos_chunks.py)."""
    return f"{PREFIX}:osmos:chunk:{member}:{number}"


OSMOS_CHUNK_PATTERN = f"{PREFIX}:osmos:chunk:*"  # every chunk key (`rekey` re-seals them)


def rate_limit_key(scope: str, endpoint: str) -> str:
    return f"{PREFIX}:ratelimit:{scope}:{endpoint}"


def effect_key(effect: str) -> str:
    """An effect's intent and outcome (effects ledger)."""
    return f"{PREFIX}:effect:{effect}"


def effects_of_key(event_id: str) -> str:
    """The outcomes recorded for one event, by label."""
    return f"{PREFIX}:effects-of:{event_id}"


def claims_key(scope: str) -> str:
    """Upstream ids already claimed as the outcome of some effect of `scope` (a sorted set:
    id -> when claimed; ids older than the ledger's retention are dropped)."""
    return f"{PREFIX}:claims:{scope}"


def legacy_claims_key(scope: str) -> str:
    """Where earlier releases kept the claims of `scope`: a set that every claim kept alive,
    so it never expired. Read still; no longer written, so it expires on its own."""
    return f"{PREFIX}:claimed:{scope}"


def lock_key(name: str) -> str:
    return f"{PREFIX}:lock:{name}"


def watermark_key(name: str) -> str:
    return f"{PREFIX}:mark:{name}"
