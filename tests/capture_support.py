"""Helpers of the capture and replay tests: capture lines, and Redis read whole."""

from __future__ import annotations

from pathlib import Path

import orjson
from redis import Redis


def redis_contents(redis: Redis) -> dict[bytes, object]:
    """Every key and everything in it, as Redis holds it."""
    contents: dict[bytes, object] = {}
    for key in redis.scan_iter(count=1000):
        kind = redis.type(key)
        if kind == b"string":
            contents[key] = redis.get(key)
        elif kind == b"hash":
            contents[key] = redis.hgetall(key)
        elif kind == b"list":
            contents[key] = redis.lrange(key, 0, -1)
        elif kind == b"set":
            contents[key] = sorted(redis.smembers(key))
        elif kind == b"zset":
            contents[key] = redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            contents[key] = redis.xrange(key)
        else:
            contents[key] = kind
    return contents


def raw_bytes(contents: dict[bytes, object]) -> bytes:
    """Keys and values flattened into one byte string to search in."""
    parts: list[bytes] = []

    def walk(value: object) -> None:
        if isinstance(value, bytes):
            parts.append(value)
        elif isinstance(value, (str, int, float)):
            parts.append(str(value).encode())
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(contents)
    return b"\n".join(parts)


def read_lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def capture_line(body: bytes, received_at: str = "2026-11-20T10:00:00+00:00", **extra: object) -> bytes:
    return orjson.dumps(
        {
            "received_at": received_at,
            "source": "osma",
            "headers": {"content-type": "application/json"},
            "body": body.decode(),
            **extra,
        }
    )
