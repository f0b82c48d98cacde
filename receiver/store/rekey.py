"""`osma-router rekey`: seal everything stored under the newest key.

Rotation: put a new key first in `OSMA_ROUTER_ENCRYPTION_KEYS` (keep the old ones after
it), restart, run `osma-router rekey`, then drop the old keys. Turning encryption on is
the same step with no old key: what was stored in clear before is sealed.

- Captured deliveries (both streams: deliveries and duplicates) are re-sealed.
- Job payloads (queued, scheduled, deferred, running, failed): a sealed event body is
  re-sealed; one stored in clear from before encryption was on is sealed.
- Failure messages: a failed run's sealed message and traceback in the job's meta are
  re-sealed; one kept in clear (the meta's `last_error`, the job hash's `exc_info`, RQ's
  results stream) is sealed into the meta and RQ's copies keep only the exception type
  (`store/failed.py`).
- Osmos record chunks (`store/osmos_chunks.py`) sealed under an older key are re-sealed.
  One stored in clear is counted, not sealed: the jobs that read it were queued saying
  so, and a job already taken by a worker would then find a blob it cannot read.

Each write is a compare-and-set in Redis, so deliveries and workers running meanwhile
lose nothing; what is already under the newest key is left alone, so running it twice is
harmless. A job that a worker was running holds its old copy in memory and may write it
back when it fails: the worker seals it then (`worker/execution.py`), and a second run
of `rekey` counts what is left.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken
from redis import Redis

from ..crypto import Sealer
from ..keys import (
    CAPTURE_DUPLICATES_KEY,
    CAPTURE_KEY,
    OSMOS_CHUNK_PATTERN,
    RQ_JOB_PREFIX,
    RQ_RESULTS_PREFIX,
)
from .capture import StoredCapture, stored_captures
from .enqueue import JOB_FUNCTION
from .failed import SEALED_FIELDS, is_stub, kind_of, sealed_stub

_BATCH = 200
_FERNET_PREFIX = b"gAAAAA"  # every Fernet token starts so (version byte 0x80, base64)
COPY_TTL_MS = 24 * 3600 * 1000  # a copy left by a rekey that died midway goes by itself

# Stream entries cannot be changed in place: the re-sealed copy is built beside the
# stream (same entry ids), then this script copies what arrived meanwhile and swaps it in,
# in one atomic step. KEYS: the stream, the copy. ARGV: the last id copied.
_SWAP_CAPTURES = """
if redis.call('EXISTS', KEYS[1]) == 0 then  -- expired meanwhile: everything in it was too old
  redis.call('DEL', KEYS[2])
  return 0
end
local tail = redis.call('XRANGE', KEYS[1], ARGV[1] == '-' and '-' or '(' .. ARGV[1], '+')
for _, entry in ipairs(tail) do
  redis.call('XADD', KEYS[2], entry[1], unpack(entry[2]))
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  local ttl = redis.call('PTTL', KEYS[1])
  redis.call('RENAME', KEYS[2], KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return #tail
"""

# KEYS[1]: a hash (a job, a chunk). ARGV: field count, then per field: name, value when
# read ('' when absent), new value ('' to delete). All or nothing: 0 when any field
# changed meanwhile.
_REWRITE_FIELDS = """
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  if (redis.call('HGET', KEYS[1], ARGV[2 + 3 * i]) or '') ~= ARGV[3 + 3 * i] then return 0 end
end
for i = 0, n - 1 do
  local name, new = ARGV[2 + 3 * i], ARGV[4 + 3 * i]
  if new == '' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, new) end
end
return 1
"""

# KEYS: an RQ results stream, a scratch key. ARGV: per entry to change: id, exc_string when read, new
# exc_string. The stream is rebuilt with those values (same ids, same TTL) if none of them
# changed meanwhile; 0 otherwise.
_REWRITE_RESULTS = """
local wanted = {}
for i = 1, #ARGV, 3 do wanted[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]} end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local copy = KEYS[2]
redis.call('DEL', copy)
for _, entry in ipairs(entries) do
  local fields, change = entry[2], wanted[entry[1]]
  for f = 1, #fields, 2 do
    if change and fields[f] == 'exc_string' then
      if fields[f + 1] ~= change[1] then redis.call('DEL', copy) return 0 end
      fields[f + 1] = change[2]
    end
  end
  redis.call('XADD', copy, entry[1], unpack(fields))
end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('RENAME', copy, KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


@dataclass
class RekeyReport:
    resealed: int = 0
    current: int = 0  # already under the newest key
    plaintext: int = 0  # found in clear (stored before encryption was turned on)
    sealed: int = 0  # of those, sealed now
    unreadable: int = 0
    changed_meanwhile: int = 0  # captured, run or rewritten by someone else meanwhile: left as written

    def describe(self, name: str) -> str:
        return (
            f"{name}: {self.resealed} re-encrypted, {self.current} already under the newest key, "
            f"{self.plaintext} found in clear, {self.sealed} sealed, {self.unreadable} unreadable, "
            f"{self.changed_meanwhile} changed meanwhile"
        )


@dataclass
class _JobChange:
    """What rekey writes to one job hash: field -> (value read, new value)."""

    fields: dict[str, tuple[bytes, bytes]]
    payload: str = ""  # "resealed" or "sealed" when the payload changes
    failure: str = ""  # the same for the error a failed run left


class Rekeyer:
    """Seals captures, job payloads and failure messages with the first configured key."""

    def __init__(self, redis: Redis, sealer: Sealer, newest_key: str) -> None:
        self.redis = redis
        self.sealer = sealer
        self._newest = Fernet(newest_key)
        self._swap = redis.register_script(_SWAP_CAPTURES)
        self._rewrite = redis.register_script(_REWRITE_FIELDS)
        self._results = redis.register_script(_REWRITE_RESULTS)

    def __repr__(self) -> str:
        return "Rekeyer(keys=<masked>)"

    def _reseal(self, token: bytes, report: RekeyReport) -> bytes | None:
        """The token under the newest key, or None when it is current or unreadable."""
        try:
            self._newest.decrypt(token)
            report.current += 1
            return None
        except InvalidToken:
            pass
        try:
            return self.sealer.reseal(token).encode("ascii")
        except InvalidToken:
            report.unreadable += 1
            return None

    def _seal(self, text: bytes) -> str:
        return self.sealer.seal(text)

    # Captures -------------------------------------------------------------------------

    def captures(self) -> RekeyReport:
        report = RekeyReport()
        for key in (CAPTURE_KEY, CAPTURE_DUPLICATES_KEY):
            self._capture_stream(key, report)
        return report

    def _capture_stream(self, key: str, report: RekeyReport) -> None:
        copy = key + ":rekey"
        self.redis.delete(copy)
        last = "-"
        for chunk in _chunks(stored_captures(self.redis, key=key), _BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for stored in chunk:
                new = self._reseal(stored.token, report)
                report.resealed += new is not None
                token = new or stored.token  # current or unreadable: copied as it is
                pipe.xadd(copy, {"d": token, "dup": "1" if stored.duplicate else "0"}, id=stored.entry_id)
            pipe.pexpire(copy, COPY_TTL_MS)
            pipe.execute()
            last = chunk[-1].entry_id.decode()
        report.changed_meanwhile += int(self._swap(keys=[key, copy], args=[last]))

    # Jobs -----------------------------------------------------------------------------

    def jobs(self) -> tuple[RekeyReport, RekeyReport]:
        """Every job hash: its payload, and the error a failed run left in it."""
        payloads, failures = RekeyReport(), RekeyReport()
        for key in self.redis.scan_iter(match=RQ_JOB_PREFIX + "*", count=1000, _type="hash"):
            data, meta, exc_info = (_bytes(v) for v in self.redis.hmget(key, ["data", "meta", "exc_info"]))
            job_id = key[len(RQ_JOB_PREFIX) :].decode()
            change = _JobChange(fields={})
            if data:
                self._job_data(data, payloads, change)
            self._job_failure(job_id, meta, exc_info, failures, change)
            if not change.fields:
                continue
            args: list[Any] = [len(change.fields)]
            for name, (old, new) in change.fields.items():
                args.extend((name, old, new))
            done = bool(self._rewrite(keys=[key], args=args))
            for what, report in ((change.payload, payloads), (change.failure, failures)):
                if what and done:
                    report.resealed += what == "resealed"
                    report.sealed += what == "sealed"
                elif what:
                    report.changed_meanwhile += 1
        return payloads, failures

    def _job_data(self, stored: bytes, report: RekeyReport, change: _JobChange) -> None:
        compressed = False
        try:
            raw = zlib.decompress(stored)  # RQ compresses the data it saves itself
            compressed = True
        except zlib.error:
            raw = stored
        try:
            function, instance, args, kwargs = orjson.loads(raw)
            spec = args[0]
            if function != JOB_FUNCTION or not isinstance(spec, dict):
                return  # not one of ours (a measurement's flush carries no event)
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, IndexError):
            return
        if isinstance(spec.get("body"), str):  # stored before encryption was turned on
            report.plaintext += 1
            body = spec.pop("body").encode("utf-8")
            spec["sealed"] = self._seal(body)
            change.payload = "sealed"
        else:
            field = "sealed_line" if "sealed_line" in spec else "sealed"
            token = spec.get(field)
            if not isinstance(token, str):
                return
            new = self._reseal(token.encode("ascii"), report)
            if new is None:
                return
            spec[field] = new.decode("ascii")
            change.payload = "resealed"
        data = orjson.dumps([function, instance, args, kwargs])
        change.fields["data"] = (stored, zlib.compress(data) if compressed else data)

    def _job_failure(
        self, job_id: str, stored_meta: bytes, exc_info: bytes, report: RekeyReport, change: _JobChange
    ) -> None:
        try:
            meta = orjson.loads(stored_meta) if stored_meta else {}
        except orjson.JSONDecodeError:
            return
        if not isinstance(meta, dict):
            return
        seen = RekeyReport()
        for name in SEALED_FIELDS:
            token = meta.get(name)
            if isinstance(token, str):
                new = self._reseal(token.encode("ascii"), seen)
                if new is not None:
                    meta[name] = new.decode("ascii")
                    change.failure = "resealed"
        if seen.unreadable:
            report.unreadable += 1
        elif seen.current and not change.failure:
            report.current += 1
        stored_exc = _unzip(exc_info).strip()  # RQ writes an empty one when a job is requeued
        traceback = stored_exc or self._latest_exc_string(job_id)
        clear_traceback = traceback if traceback and not is_stub(traceback) else ""
        clear_exc_info = bool(stored_exc) and not is_stub(stored_exc)
        clear_line = meta.get("last_error") if "last_error_sealed" not in meta else None
        if isinstance(clear_line, str) or (clear_traceback and "last_error_sealed" not in meta):
            line = clear_line if isinstance(clear_line, str) else _last_line(clear_traceback)
            meta["last_error"] = kind_of(line)
            meta["last_error_sealed"] = self._seal(line.encode("utf-8"))
            if clear_traceback:
                meta["traceback_sealed"] = self._seal(clear_traceback.encode("utf-8"))
            change.failure = "sealed"
        if clear_exc_info:
            stub = sealed_stub(str(meta.get("last_error") or kind_of(clear_traceback)))
            change.fields["exc_info"] = (exc_info, zlib.compress(stub.encode("utf-8")))
            change.failure = "sealed"
        if change.failure == "sealed":
            report.plaintext += 1
        if change.failure:
            change.fields["meta"] = (stored_meta, orjson.dumps(meta))

    def _latest_exc_string(self, job_id: str) -> str:
        rows: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrevrange(  # type: ignore[assignment]
            RQ_RESULTS_PREFIX + job_id, count=1
        )
        return _result_text(rows[0][1].get(b"exc_string", b"")) if rows else ""

    def results(self, report: RekeyReport) -> None:
        """RQ's results streams: a traceback kept in clear becomes the exception type alone
        (run after `jobs`, which sealed it into the job's meta)."""
        for key in self.redis.scan_iter(match=RQ_RESULTS_PREFIX + "*", count=1000, _type="stream"):
            rows: list[tuple[bytes, dict[bytes, bytes]]] = self.redis.xrange(key)  # type: ignore[assignment]
            args: list[bytes] = []
            for entry_id, fields in rows:
                stored = fields.get(b"exc_string")
                text = _result_text(stored or b"")
                if stored and text and not is_stub(text):
                    stub = sealed_stub(kind_of(text)).encode("utf-8")
                    args.extend((entry_id, stored, base64.b64encode(zlib.compress(stub))))
            if args and not self._results(keys=[key, key + b":rekey"], args=args):
                report.changed_meanwhile += 1

    # Osmos chunks ---------------------------------------------------------------------

    def chunks(self) -> RekeyReport:
        report = RekeyReport()
        for key in self.redis.scan_iter(match=OSMOS_CHUNK_PATTERN, count=1000, _type="hash"):
            blob = _bytes(self.redis.hget(key, "records"))
            if not blob:
                continue
            if not blob.startswith(_FERNET_PREFIX):
                report.plaintext += 1  # see the module docstring: left as it is
                continue
            new = self._reseal(blob, report)
            if new is None:
                continue
            if self._rewrite(keys=[key], args=[1, "records", blob, new]):
                report.resealed += 1
            else:
                report.changed_meanwhile += 1
        return report


def _bytes(value: bytes | str | None) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value or b""


def _unzip(value: bytes) -> str:
    if not value:
        return ""
    try:
        return zlib.decompress(value).decode("utf-8", errors="replace")
    except zlib.error:
        return value.decode("utf-8", errors="replace")


def _result_text(value: bytes) -> str:
    """An RQ result's `exc_string`: base64 of zlib."""
    if not value:
        return ""
    try:
        return zlib.decompress(base64.b64decode(value)).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError, zlib.error):
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _chunks(items: Iterator[StoredCapture], size: int) -> Iterator[list[StoredCapture]]:
    chunk: list[StoredCapture] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_reports(rekeyer: Rekeyer) -> Iterator[tuple[str, RekeyReport]]:
    yield "captured deliveries", rekeyer.captures()
    payloads, failures = rekeyer.jobs()
    yield "job payloads", payloads
    rekeyer.results(failures)
    yield "failure messages", failures
    yield "Osmos record chunks", rekeyer.chunks()
