"""`osma-router rekey`: re-encrypt everything stored under the newest key.

Rotation: put a new key first in `OSMA_ROUTER_ENCRYPTION_KEYS` (keep the old ones after
it), restart, run `osma-router rekey`, then drop the old keys. Captured deliveries and the
event bodies in job hashes (queued, scheduled, failed) are re-sealed. Each write is a
compare-and-set in Redis, so deliveries and workers running meanwhile lose nothing; a
token already under the newest key is left alone, so running it twice is harmless.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from cryptography.fernet import Fernet, InvalidToken
from redis import Redis

from ..crypto import Sealer
from ..keys import CAPTURE_KEY, RQ_JOB_PREFIX
from .capture import StoredCapture, stored_captures
from .enqueue import JOB_FUNCTION

_BATCH = 200

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

# KEYS[1]: a job hash. ARGV: the data it held when read, the new data.
_RESEAL_JOB = """
if redis.call('HGET', KEYS[1], 'data') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'data', ARGV[2])
  return 1
end
return 0
"""


@dataclass
class RekeyReport:
    resealed: int = 0
    current: int = 0  # already under the newest key
    unreadable: int = 0
    changed_meanwhile: int = 0  # captured, run or rewritten by someone else meanwhile: left as written


class Rekeyer:
    """Re-seals captures and job payloads with the first of the configured keys."""

    def __init__(self, redis: Redis, sealer: Sealer, newest_key: str) -> None:
        self.redis = redis
        self.sealer = sealer
        self._newest = Fernet(newest_key)
        self._swap = redis.register_script(_SWAP_CAPTURES)
        self._job = redis.register_script(_RESEAL_JOB)

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

    def captures(self) -> RekeyReport:
        report = RekeyReport()
        copy = CAPTURE_KEY + ":rekey"
        self.redis.delete(copy)
        last = "-"
        for chunk in _chunks(stored_captures(self.redis), _BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for stored in chunk:
                new = self._reseal(stored.token, report)
                report.resealed += new is not None
                token = new or stored.token  # current or unreadable: copied as it is
                pipe.xadd(copy, {"d": token, "dup": "1" if stored.duplicate else "0"}, id=stored.entry_id)
            pipe.execute()
            last = chunk[-1].entry_id.decode()
        report.changed_meanwhile = int(self._swap(keys=[CAPTURE_KEY, copy], args=[last]))
        return report

    def jobs(self) -> RekeyReport:
        report = RekeyReport()
        for key in self.redis.scan_iter(match=RQ_JOB_PREFIX + "*", count=1000, _type="hash"):
            stored: bytes | None = self.redis.hget(key, "data")  # type: ignore[assignment]
            if not stored:
                continue
            new = self._job_data(stored, report)
            if new is not None:
                if self._job(keys=[key], args=[stored, new]):
                    report.resealed += 1
                else:
                    report.changed_meanwhile += 1
        return report

    def _job_data(self, stored: bytes, report: RekeyReport) -> bytes | None:
        compressed = False
        try:
            raw = zlib.decompress(stored)  # RQ compresses the data it saves itself
            compressed = True
        except zlib.error:
            raw = stored
        try:
            function, instance, args, kwargs = orjson.loads(raw)
            spec = args[0]
            field = "sealed_line" if "sealed_line" in spec else "sealed"
            token = spec[field] if function == JOB_FUNCTION else None
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, IndexError):
            return None  # not one of ours, or not sealed
        if not isinstance(token, str):
            return None
        new = self._reseal(token.encode("ascii"), report)
        if new is None:
            return None
        spec[field] = new.decode("ascii")
        data = orjson.dumps([function, instance, args, kwargs])
        return zlib.compress(data) if compressed else data


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
    yield "job payloads", rekeyer.jobs()
