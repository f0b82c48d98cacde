"""A Lua script called over one connection held for it: the receiver's admit call.

redis-py's `Script.__call__` spends about 50 µs of CPU per call around the round trip
itself (measured, one core, 30 arguments): its packer encodes each argument in Python
(~20 µs, where hiredis' `pack_command` takes ~3 µs), the pool checks a connection out
and in again (a lock and a readability probe each time), the retry wrapper and a task
per write deadline. Under load the group committer makes one call for every 8 to 30
deliveries, so at 16 connections that is ~6 µs of a ~85 µs delivery.

The group committer makes one call at a time, so it can keep one connection to itself:
`HeldScript` packs with hiredis, writes, and reads the reply under the client's socket
timeout. What redis-py's path did for errors it does too:

- a script Redis does not know (a restart, `SCRIPT FLUSH`) is loaded and the call sent
  again (`NOSCRIPT`);
- a dropped connection, or a call that timed out, is sent once more on a new connection
  (the receiver's policy: one retry, no backoff; see connection.py). A call whose reply
  was lost may have run: sent again, its new events come back as duplicates, which are
  answered 200 and are stored all the same (their mark counts one repeat too many), and
  a forced replay's jobs are queued twice (redis-py's path did the same);
- an error Redis answered (BUSY, OOM, a script error) is raised as it is, and the
  connection stays;
- after any other failure (a cancellation) the connection is closed before anything
  else is sent on it, so no later call can read an earlier call's reply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import RECEIVER_RETRIES


class HeldScript:
    """`await script(keys, args)`: EVALSHA of `source`, one call at a time."""

    def __init__(self, redis: AsyncRedis, source: str, *, retries: int = RECEIVER_RETRIES) -> None:
        self.redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.retries = retries
        self._connection: AbstractConnection | None = None

    async def __call__(self, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        # hiredis' stub types the tuple as one element long; it takes any number.
        command = hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))  # type: ignore[arg-type]
        connection = self._connection
        if connection is None:
            # Checked out once and kept: the pool still closes it with the client.
            connection = self._connection = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        attempts = self.retries + 1
        while True:
            attempts -= 1
            try:
                try:
                    return await self._round_trip(connection, command)
                except NoScriptError:
                    await connection.send_command("SCRIPT", "LOAD", self.source, check_health=False)
                    await connection.read_response()
                    return await self._round_trip(connection, command)
            except ResponseError:
                raise  # an error Redis answered was read whole: the connection stays usable
            except (RedisConnectionError, RedisTimeoutError):
                # redis-py has closed the connection already; closing again costs nothing.
                await connection.disconnect()
                if attempts <= 0:
                    raise
            except BaseException:
                # A reply may still be on its way: never read it as the next call's.
                await connection.disconnect()
                raise

    @staticmethod
    async def _round_trip(connection: AbstractConnection, command: bytes) -> Any:
        # Opens the connection again if an earlier failure closed it.
        await connection.send_packed_command(command, check_health=False)
        return await connection.read_response()
