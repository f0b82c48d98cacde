"""Sessions and CSRF tokens for the console.

A session is a signed cookie, `<issued>.<nonce>.<signed-in>.<mac>`, HMAC-SHA256 under a key derived
from `OSMA_ROUTER_CONSOLE_TOKEN` (changing the token ends every session). Without a
token the console serves loopback only and every session counts as signed in, under a key
of this process's own. Either way state-changing forms carry a CSRF token, so a page on
another site cannot make a browser post to the console; the login form too (its session
is a signed-out one, replaced by a new one on login). The CSRF token is a MAC of the
session's nonce; every POST must carry it (`csrf` field).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..settings import Secret

COOKIE = "osma_router_console"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    nonce: str
    issued: int
    signed_in: bool
    csrf: str


class Sessions:
    """Makes and checks session cookies and CSRF tokens."""

    def __init__(self, token: Secret | None, clock: Callable[[], float] = time.time) -> None:
        self.login_required = token is not None
        self._token = token
        material = token.reveal().encode() if token is not None else os.urandom(32)
        self._key = hashlib.sha256(b"osma-router console session\0" + material).digest()
        self._clock = clock

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        if self._token is None:
            return True
        # Digests of equal length: the comparison does not tell the token's length either.
        expected = hashlib.sha256(self._token.reveal().encode()).digest()
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected)

    def new_cookie(self, *, signed_in: bool) -> tuple[str, Session]:
        """A fresh session (a new nonce, so a login never keeps a session it was given)."""
        issued, nonce = int(self._clock()), secrets.token_hex(16)
        signed_in = signed_in or not self.login_required
        body = f"{issued}.{nonce}.{int(signed_in)}"
        return f"{body}.{self._mac(body)}", self._session(nonce, issued, signed_in)

    def open(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or None when it is missing, forged or expired."""
        if not cookie or cookie.count(".") != 3:
            return None
        issued_text, nonce, flag, mac = cookie.split(".")
        expected = self._mac(f"{issued_text}.{nonce}.{flag}").encode()
        # As bytes: compare_digest refuses a str that is not ASCII, and a cookie may be anything.
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected):
            return None
        try:
            issued = int(issued_text)
        except ValueError:
            return None
        if not 0 <= self._clock() - issued <= SESSION_SECONDS:
            return None
        return self._session(nonce, issued, flag == "1")

    def _session(self, nonce: str, issued: int, signed_in: bool) -> Session:
        return Session(nonce, issued, signed_in, csrf=self._mac(f"csrf.{nonce}")[:40])

    def csrf_matches(self, session: Session, given: str) -> bool:
        return hmac.compare_digest(session.csrf.encode(), given.encode())
