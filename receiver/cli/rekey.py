"""`osma-router rekey`: seal what is stored under the newest key, and what was stored in
clear before encryption was turned on (see `receiver/store/rekey.py` for how it stays
safe while the service runs)."""

from __future__ import annotations

import argparse
from typing import Any

from ..crypto import Sealer
from ..exceptions import ConfigError, PermanentError
from ..store.connection import connect
from ..store.rekey import Rekeyer, iter_reports
from .common import add_command, current_settings


def cmd_rekey(args: argparse.Namespace) -> int:
    settings = current_settings()
    if not settings.encryption_keys:
        raise ConfigError("OSMA_ROUTER_ENCRYPTION_KEYS is not set: give the new key first, then the old ones")
    redis = connect(settings, "command")
    unreadable = 0
    try:
        rekeyer = Rekeyer(redis, Sealer(settings.encryption_keys), settings.encryption_keys[0].reveal())
        for name, report in iter_reports(rekeyer):
            unreadable += report.unreadable
            print(report.describe(name))
    finally:
        redis.close()
    if unreadable:
        raise PermanentError(
            f"{unreadable} stored payload(s) cannot be decrypted with any configured key: "
            "keep the key they were sealed with in OSMA_ROUTER_ENCRYPTION_KEYS"
        )
    return 0


def add_commands(sub: Any) -> None:
    """`osma-router rekey`."""
    add_command(
        sub,
        "rekey",
        cmd_rekey,
        "seal captured deliveries, job payloads and failure messages under the newest key of "
        "OSMA_ROUTER_ENCRYPTION_KEYS (run after putting a new key first, or after turning "
        "encryption on: what was stored in clear is sealed)",
    )
