"""deploy/: body limits per path at the proxy (Caddy and the Kubernetes Ingress).

Webhooks get the receiver's own 1 MiB at the proxy, so an unauthenticated client cannot make
the proxy take more; Osmos batches get 256 MiB and are streamed to the receiver unbuffered,
so the receiver refuses a wrong token before the body has arrived. With a `caddy` binary the
Caddyfile is adapted by Caddy itself and run in front of a real receiver."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from receiver.settings import Settings
from receiver.store.server import free_port
from tests.ops_support import Server, wait_for
from tests.support import ROOT, SECRET, make_event, signature_headers

DEPLOY = ROOT / "deploy"
CADDYFILES = [DEPLOY / "Caddyfile", DEPLOY / "systemd" / "Caddyfile"]
WEBHOOK_LIMIT = Settings().max_body_bytes  # 1 MiB
OSMOS_LIMIT = Settings().osmos_max_body_bytes  # 256 MiB
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
TOKEN = "osmos-test-token-1234"
CONNECTOR = """
[[routes]]
on = "task.completed"
handler = "noop"

[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
fields = [{ name = "customer_id", type = "string", nullable = false }]
"""


def size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMG]iB)", text).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit]


def handle_blocks(caddyfile: Path) -> dict[str, str]:
    """Each named matcher's path and the text of its `handle @name { ... }` block."""
    text = caddyfile.read_text()
    blocks = {}
    for name, path in re.findall(r"^\s*@(\w+) path (\S+)\s*$", text, re.M):
        start = text.index(f"handle @{name} {{")
        depth, end = 0, start
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0 and text[end] == "}":
                break
        blocks[path] = text[start : end + 1]
    return blocks


@pytest.mark.parametrize("caddyfile", CADDYFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_caddyfile_limits_bodies_per_path(caddyfile):
    blocks = handle_blocks(caddyfile)
    assert set(blocks) == {"/webhooks/*", "/ingest/osmos/*"}  # nothing else is public
    limits = {path: size(re.search(r"max_size (\S+)", block).group(1)) for path, block in blocks.items()}  # type: ignore[union-attr]
    assert limits == {"/webhooks/*": WEBHOOK_LIMIT, "/ingest/osmos/*": OSMOS_LIMIT}
    text = re.sub(r"#.*", "", caddyfile.read_text())
    assert "request_buffers" not in text and "buffer_requests" not in text  # streamed, never buffered
    assert re.search(r"handle \{\s*respond 404\s*\}", text)


# --- with Caddy itself ---------------------------------------------------------------------

needs_caddy = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")


def caddy_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "caddy-home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_DATA_HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        **extra,
    }


@needs_caddy
@pytest.mark.parametrize("caddyfile", CADDYFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_caddy_adapts_the_caddyfile_to_these_limits(caddyfile, tmp_path):
    result = subprocess.run(
        ["caddy", "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
        env=caddy_env(tmp_path, WEBHOOK_DOMAIN="webhooks.example.com"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = {}

    def walk(node: Any, paths: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for match in node.get("match", []):
                paths = tuple(match.get("path", paths))
            if node.get("handler") == "request_body":
                found[paths] = node["max_size"]
            if node.get("handler") == "reverse_proxy":
                assert "request_buffers" not in node, f"{paths} buffers request bodies"
            for value in node.values():
                walk(value, paths)
        elif isinstance(node, list):
            for value in node:
                walk(value, paths)

    walk(json.loads(result.stdout), ())
    assert found == {("/webhooks/*",): WEBHOOK_LIMIT, ("/ingest/osmos/*",): OSMOS_LIMIT}


@pytest.fixture
def behind_caddy(tmp_path, redis, redis_server, monkeypatch) -> Iterator[tuple[str, Server]]:
    """The compose Caddyfile on a loopback port in front of a real `serve`."""
    routes = tmp_path / "osma-router.toml"
    routes.write_text(CONNECTOR)
    env = {
        "OSMA_ROUTER_REDIS_URL": redis_server.url,
        "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
        "OSMA_ROUTER_CONFIG": str(routes),
        "OSMA_ROUTER_TRUSTED_PROXIES": "127.0.0.1",
        "CRM_OSMOS_TOKEN": TOKEN,
    }
    server = Server(env, tmp_path, name="behind-caddy")
    port = free_port()
    text = (DEPLOY / "Caddyfile").read_text().replace("receiver:8000", f"127.0.0.1:{server.port}")
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n}\n" + text)
    server.wait_up()  # before Caddy: its first health check of /readyz must pass
    log = (tmp_path / "caddy.log").open("wb")
    caddy = subprocess.Popen(
        ["caddy", "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        env=caddy_env(tmp_path, WEBHOOK_DOMAIN=f"http://127.0.0.1:{port}"),
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while caddy.poll() is None and time.monotonic() < deadline:
            try:  # an unknown connector: 404 from the receiver once Caddy passes requests on
                if httpx.post(f"http://127.0.0.1:{port}/ingest/osmos/none", timeout=1).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert caddy.poll() is None, (tmp_path / "caddy.log").read_text()
        yield f"http://127.0.0.1:{port}", server
    finally:
        caddy.terminate()
        caddy.wait(30)
        log.close()
        assert server.stop() == 0


def rejected(server: Server, source: str, reason: str) -> float:
    """The receiver's own count of refused deliveries of `source` for `reason`."""
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    pattern = rf'delivery_reasons_total{{(?=[^}}]*source="{source}")(?=[^}}]*"{reason}")[^}}]*}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics))


def chunks(total: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked), so only reading it tells its size."""
    for _ in range(total // 65_536):
        yield b" " * 65_536


@needs_caddy
def test_caddy_refuses_a_webhook_body_over_1_mib_itself(behind_caddy):
    url, server = behind_caddy
    with httpx.Client(base_url=url, timeout=30) as http:
        body = make_event(event_id="evt_behind_caddy")
        accepted = http.post("/webhooks/osma", content=body, headers=signature_headers(body))
        assert accepted.status_code == 202, accepted.text
        assert http.get("/metrics").status_code == 404  # internal paths stay internal
        try:
            refused = http.post("/webhooks/osma", content=chunks(WEBHOOK_LIMIT + WEBHOOK_LIMIT // 2))
        except httpx.HTTPError:
            pass  # closing the connection refuses it too
        else:
            # Caddy's own 413 (no body): with a larger proxy limit the receiver would have
            # read past 1 MiB and answered its JSON `body_too_large`.
            assert refused.status_code == 413 and refused.content == b"", refused.text
    assert rejected(server, "osma", "body_too_large") == 0


@needs_caddy
def test_caddy_streams_osmos_batches_so_a_wrong_token_is_refused_before_the_body_arrives(behind_caddy):
    url, server = behind_caddy
    with httpx.Client(base_url=url, timeout=30) as http:
        wrong = {"authorization": "not-the-token", "content-type": "application/json"}
        passed = http.post("/ingest/osmos/crm", content=chunks(2 * WEBHOOK_LIMIT), headers=wrong)
        assert passed.status_code == 401 and passed.json()["error"]["type"] == "unauthorized"
    before = rejected(server, "osmos", "unauthorized")
    # 100 MiB announced, 64 KiB sent: the receiver has the request and refuses it while the
    # rest has not been sent. A proxy that buffered bodies would still be waiting for it.
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            f"POST /ingest/osmos/crm HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: not-the-token\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * 1024**2}\r\n\r\n".encode()
        )
        conn.sendall(b"[" + b" " * 65_535)
        wait_for(
            lambda: rejected(server, "osmos", "unauthorized") > before,
            what="the receiver to refuse the batch while its body is still being sent",
        )


# --- Kubernetes Ingress -------------------------------------------------------------------


def ingresses() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((DEPLOY / "kubernetes" / "ingress.yaml").read_text())
    found = {}
    for document in documents:
        if document and document["kind"] == "Ingress":
            (rule,) = document["spec"]["rules"]
            (path,) = rule["http"]["paths"]
            found[path["path"]] = document
    return found


def nginx_size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", text).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def test_ingress_limits_bodies_per_path():
    found = ingresses()
    assert set(found) == {"/webhooks", "/ingest/osmos"}  # never /metrics
    webhooks, osmos = (found[p]["metadata"]["annotations"] for p in ("/webhooks", "/ingest/osmos"))
    prefix = "nginx.ingress.kubernetes.io/"
    assert nginx_size(webhooks[prefix + "proxy-body-size"]) == WEBHOOK_LIMIT
    assert nginx_size(osmos[prefix + "proxy-body-size"]) == OSMOS_LIMIT
    assert osmos[prefix + "proxy-request-buffering"] == "off"
    assert webhooks.get(prefix + "proxy-request-buffering", "on") == "on"  # 1 MiB at most
    for ingress in found.values():
        assert ingress["spec"]["rules"][0]["http"]["paths"][0]["pathType"] == "Prefix"
        assert ingress["spec"]["tls"] == found["/webhooks"]["spec"]["tls"]
        assert ingress["spec"]["ingressClassName"] == found["/webhooks"]["spec"]["ingressClassName"]
