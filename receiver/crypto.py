"""Encryption at rest for event bodies we keep (queued job payloads, captures).

Fernet tokens under a `MultiFernet`: the first key encrypts, every key decrypts, so keys
rotate by putting a new one first and dropping the old one once nothing uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .exceptions import ConfigError, PermanentError
from .settings import Secret


class Sealer:
    """Encrypts and decrypts bytes with the configured Fernet keys."""

    def __init__(self, keys: Sequence[Secret]) -> None:
        if not keys:
            raise ConfigError("OSMA_ROUTER_ENCRYPTION_KEYS is empty")
        self._fernet = MultiFernet([Fernet(k.reveal()) for k in keys])

    def __repr__(self) -> str:
        return "Sealer(keys=<masked>)"

    def seal(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode("ascii")

    def open(self, token: str | bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise PermanentError(
                "a stored payload cannot be decrypted with OSMA_ROUTER_ENCRYPTION_KEYS "
                "(was the key it was sealed with removed?)"
            ) from None

    def reseal(self, token: str | bytes) -> str:
        """The same plaintext under the newest key."""
        return self._fernet.rotate(token).decode("ascii")


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")
