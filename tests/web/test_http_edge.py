"""The HTTP edge of a real `osma-router serve`, driven with raw sockets on loopback: a
request head over OSMA_ROUTER_MAX_HEADER_BYTES gets 431, one that does not arrive within
OSMA_ROUTER_HEADER_TIMEOUT gets 408, a connection beyond OSMA_ROUTER_MAX_CONNECTIONS gets
503, idle kept-alive connections close after OSMA_ROUTER_KEEPALIVE_TIMEOUT, and an 8 MiB
`osma-signature` header is refused before anything verifies it."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import httpx
import orjson
import pytest

from receiver.store.server import RedisServer, free_port
from tests.support import (
    env_for,
    make_event,
    signature_headers,
    start_osma_router,
)

KIB = 1024
GIVE_UP = 60.0  # seconds: a bound for the test to end, not an expected duration


@dataclass
class Answer:
    status: int | None  # None: closed without an answer
    head: bytes
    body: bytes
    closed: bool


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP answer, and whether the server closed the connection after it."""
    sock.settimeout(GIVE_UP)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return Answer(None, data, b"", closed=True)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    closed = b"connection: close" in head.lower()
    return Answer(int(head.split(b" ")[1]), head, body, closed)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP)


def get(path: str = "/healthz", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n" + extra + b"\r\n"


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed its side (waits up to GIVE_UP for it)."""
    sock.settimeout(GIVE_UP)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


@dataclass
class Serve:
    port: int
    process: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_serve(redis_server: RedisServer, **limits: str) -> Iterator[Serve]:
    port = free_port()
    process = start_osma_router(["serve", "--port", str(port)], env_for(redis_server.url, **limits), cwd=None)
    deadline = time.monotonic() + GIVE_UP
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
    try:
        yield Serve(port, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def serve(redis_server: RedisServer) -> Iterator[Serve]:
    yield from start_serve(redis_server, OSMA_ROUTER_HEADER_TIMEOUT="1", OSMA_ROUTER_KEEPALIVE_TIMEOUT="1")


@pytest.fixture(scope="module")
def capped(redis_server: RedisServer) -> Iterator[Serve]:
    yield from start_serve(
        redis_server,
        OSMA_ROUTER_MAX_CONNECTIONS="4",
        OSMA_ROUTER_HEADER_TIMEOUT="60",
        OSMA_ROUTER_KEEPALIVE_TIMEOUT="60",
    )


# --- head size ----------------------------------------------------------------------------


def test_a_64_kib_header_gets_431_and_the_connection_closes(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        sock.sendall(get(extra=b"x-big: " + b"a" * (64 * KIB) + b"\r\n"))
        answer = read_answer(sock)
        assert answer.status == 431
        assert orjson.loads(answer.body)["error"]["type"] == "headers_too_large"
        assert answer.closed and is_closed(sock)


def test_a_head_just_under_the_limit_is_served(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        request = get(extra=b"x-big: " + b"a" * (16 * KIB - 200) + b"\r\n")
        assert len(request) <= 16 * KIB
        sock.sendall(request)
        assert read_answer(sock).status == 200


def test_a_head_growing_in_small_pieces_is_cut_before_it_ends(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        try:
            for _ in range(64):  # 64 KiB in small pieces, never the blank line that ends the head
                sock.sendall(b"x-more: " + b"b" * 1014 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        answer = read_answer(sock)
        assert answer.status == 431 and answer.closed


def test_a_long_request_line_counts_too(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        sock.sendall(get("/healthz?" + "q" * (64 * KIB)))
        assert read_answer(sock).status == 431


# --- head timeout -------------------------------------------------------------------------


def test_a_client_sending_its_headers_byte_by_byte_is_cut_after_the_header_timeout(serve: Serve) -> None:
    request = get(extra=b"x-slow: " + b"s" * 4096 + b"\r\n")
    with closing(connect(serve.port)) as sock:
        deadline = time.monotonic() + GIVE_UP
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                assert time.monotonic() < deadline, "still connected"
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_answer(sock)
        assert answer.status == 408 and answer.closed
        assert orjson.loads(answer.body)["error"]["type"] == "request_timeout"
        assert is_closed(sock)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        answer = read_answer(sock)
        assert answer.status == 408 and answer.closed and is_closed(sock)


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        sock.sendall(get())
        answer = read_answer(sock)
        assert answer.status == 200 and not answer.closed
        assert is_closed(sock)


def test_a_kept_alive_connection_dribbling_the_next_request_is_cut(serve: Serve) -> None:
    with closing(connect(serve.port)) as sock:
        sock.sendall(get())
        assert read_answer(sock).status == 200
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
            for _ in range(int(GIVE_UP / 0.05)):
                sock.sendall(b"a")  # a header that never ends
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_answer(sock).status == 408


def test_requests_on_a_kept_alive_connection_each_get_the_full_timeout(serve: Serve) -> None:
    """The head timer runs per request: three prompt requests 0.6 s apart on one connection
    (longer in all than the 1 s timeout) are all served."""
    with closing(connect(serve.port)) as sock:
        for _ in range(3):
            sock.sendall(get())
            assert read_answer(sock).status == 200
            time.sleep(0.6)


# --- connections --------------------------------------------------------------------------


def test_connections_beyond_the_cap_get_503_and_are_closed(capped: Serve) -> None:
    held = [connect(capped.port) for _ in range(4)]
    try:
        for sock in held:  # each is served: four connections are within the cap
            sock.sendall(get())
            assert read_answer(sock).status == 200
        with closing(connect(capped.port)) as extra:
            answer = read_answer(extra)
            assert answer.status == 503 and answer.closed
            assert b"retry-after: 1" in answer.head.lower()
            assert orjson.loads(answer.body)["error"]["type"] == "unavailable"
        held.pop().close()
        deadline = time.monotonic() + GIVE_UP
        while True:  # once the server has seen the close, a new connection is served again
            with closing(connect(capped.port)) as again:
                again.sendall(get())
                if read_answer(again).status == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()


# --- the signature header -----------------------------------------------------------------


def test_an_8_mib_signature_header_never_reaches_verification(serve: Serve) -> None:
    body = make_event(event_id="evt_huge_signature")
    header = signature_headers(body)["osma-signature"] + ",v0=" + "f" * (8 * KIB * KIB)
    request = (
        b"POST /webhooks/osma HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\nosma-signature: " % len(body)
        + header.encode()
        + b"\r\n\r\n"
        + body
    )
    before = rejections(serve)
    with closing(connect(serve.port)) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_answer(sock).status in (431, None)
    assert rejections(serve) == before  # nothing reached the signature check


def rejections(serve: Serve) -> float:
    """Deliveries the webhook endpoint rejected so far, whatever the reason."""
    metrics = httpx.get(f"{serve.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("osma_router_deliveries_total{") and 'outcome="rejected"' in line
    )


def test_a_signature_header_over_8_kib_within_the_head_limit_is_malformed(serve: Serve) -> None:
    body = make_event(event_id="evt_long_signature")
    header = signature_headers(body)["osma-signature"] + ",v0=" + "f" * (10 * KIB)
    response = httpx.post(
        f"{serve.url}/webhooks/osma",
        content=body,
        headers={"content-type": "application/json", "osma-signature": header},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "malformed_signature"
