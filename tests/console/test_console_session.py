"""A session cookie that is not ours (forged, mangled by a proxy, not ASCII) is no session:
the browser is sent to the login form, never a 500."""

from __future__ import annotations

import httpx
import pytest

from receiver.testing.server import LiveServer


@pytest.mark.parametrize("cookie", [b"1.a.1.\xc3\xa9", b"\xff.\xfe.1.x", b"1.2.3.4"])
def test_a_cookie_that_is_not_ours_is_a_login_redirect(console_server: LiveServer, cookie: bytes) -> None:
    with httpx.Client(base_url=console_server.url, timeout=10) as client:
        answer = client.get("/", headers={"cookie": b"osma_router_console=" + cookie})
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login")
