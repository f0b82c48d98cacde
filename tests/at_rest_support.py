"""Helpers of the at-rest tests: every key and value in Redis, decoded the ways RQ and we
encode them (zlib, base64 + zlib), searched for words that must not be there in clear."""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable, Iterator

from redis import Redis


def _values(redis: Redis, key: bytes) -> Iterator[bytes]:
    """Everything stored under `key`, field names and members included."""
    kind = redis.type(key)
    if kind == b"string":
        yield redis.get(key) or b""
    elif kind == b"hash":
        for field, value in redis.hgetall(key).items():
            yield field
            yield value
    elif kind == b"list":
        yield from redis.lrange(key, 0, -1)
    elif kind == b"set":
        yield from redis.smembers(key)
    elif kind == b"zset":
        for member, _ in redis.zrange(key, 0, -1, withscores=True):
            yield member
    elif kind == b"stream":
        for entry_id, fields in redis.xrange(key):
            yield entry_id
            for field, value in fields.items():
                yield field
                yield value
    elif kind != b"none":  # expired between SCAN and TYPE is fine; an unknown type is not
        raise AssertionError(f"{key!r} has a type this scan does not read: {kind!r}")


def decoded(value: bytes) -> Iterator[bytes]:
    """The value as stored, and as it reads once decompressed or base64-decoded."""
    yield value
    try:
        yield zlib.decompress(value)  # RQ's job data and exc_info
    except zlib.error:
        pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return
    yield raw
    try:
        yield zlib.decompress(raw)  # RQ's results: exc_string, base64 of zlib
    except zlib.error:
        pass


def plaintext_hits(redis: Redis, words: Iterable[bytes]) -> list[str]:
    """`key: word` for every key whose name or content holds one of `words` in clear."""
    words = list(words)
    hits = []
    for key in redis.scan_iter(count=1000):
        texts = [key]
        for value in _values(redis, key):
            texts.extend(decoded(value))
        for word in words:
            if any(word in text for text in texts):
                hits.append(f"{key.decode(errors='replace')}: {word.decode()}")
    return hits
