"""Bounds before parsing, through a real `osma-router serve`: a body with too many records
is refused before it is parsed whole, without the receiver growing by the size of the
objects parsing it whole would make (docs/contract.md, "Osmos ingest")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.web.osmos_server import start_osmos_server

TOKEN = "osmos-bounds-token-1234"
HEADERS = {"authorization": TOKEN, "content-type": "application/json"}
ROUTES = """
[[routes]]
on = "osmos.crm.record"
handler = "noop"

[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
fields = [{ name = "customer_id", type = "string", nullable = true }]
"""


def memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


@pytest.fixture
def served(tmp_path: Path, redis, redis_server, write_routes) -> Iterator[tuple[str, int]]:
    """`osma-router serve` on a free port: its Osmos URL and its pid."""
    routes = write_routes(ROUTES)
    server, url = start_osmos_server(tmp_path, redis_server.url, routes, TOKEN)
    try:
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
def test_an_8_mb_body_of_empty_records_is_refused_without_growing_the_receiver_by_200_mb(served):
    url, pid = served
    body = b"[" + b",".join([b"{}"] * 2_666_667) + b"]"  # 8 MB, 2.7 million records
    assert len(body) >= 8_000_000
    before = memory_mb(pid)
    response = httpx.post(url, content=body, headers=HEADERS, timeout=120)
    after = memory_mb(pid)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "too_many_records"
    growth = after["VmHWM"] - before["VmRSS"]
    assert growth < 200, f"the receiver grew by {growth:.0f} MB before refusing"
