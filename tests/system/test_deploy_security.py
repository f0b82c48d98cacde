"""deploy/: each process gets only what its role needs.

The Internet-facing receiver never holds the Osma API key or the OGSM password (compose,
systemd, Kubernetes); Redis has one ACL user per role, and the receiver's user, exercised
against a real redis-server with the deploy ACL file, can run exactly what the receiver
runs; Kubernetes pods carry no service account token, run a pinned image, and talk only
along the NetworkPolicy's lines."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from cryptography.fernet import Fernet
from redis import Redis
from redis.exceptions import NoPermissionError

from receiver.store.server import free_port
from tests.ops_support import Process, Server, wait_for
from tests.support import ROOT, SECRET, make_event, osma_router, signature_headers

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
WORKER_ONLY = {
    "OSMA_ROUTER_OSMA_API_KEY",
    "OSMA_ROUTER_OGSM_BASE_URL",
    "OSMA_ROUTER_OGSM_USERNAME",
    "OSMA_ROUTER_OGSM_PASSWORD",
}
RECEIVER_ONLY = {"OSMA_ROUTER_WEBHOOK_SECRETS", "OSMA_ROUTER_CAPTURE"}


def settings_in(path: Path) -> set[str]:
    """Variable names set or shown commented-out in an env file example."""
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", path.read_text(), re.M))


def unit_env_file(name: str) -> str:
    (line,) = re.findall(r"^EnvironmentFile=(\S+)$", (DEPLOY / "systemd" / name).read_text(), re.M)
    return Path(line).name


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]
    return documents


def deployments() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in manifests()
        if d["kind"] == "Deployment"
    }


# --- secrets by role ---------------------------------------------------------------------


def test_compose_and_systemd_give_the_receiver_no_upstream_credentials():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    files = {
        "receiver": [compose["receiver"]["env_file"], unit_env_file("osma-router-receiver.service")],
        "worker": [compose["worker"]["env_file"], unit_env_file("osma-router-worker@.service")],
    }
    assert files == {"receiver": ["receiver.env"] * 2, "worker": ["worker.env"] * 2}
    receiver = settings_in(DEPLOY / "receiver.env.example") | set(compose["receiver"]["environment"])
    worker = settings_in(DEPLOY / "worker.env.example") | set(compose["worker"]["environment"])
    assert not receiver & WORKER_ONLY, f"the receiver gets {sorted(receiver & WORKER_ONLY)}"
    assert not worker & RECEIVER_ONLY, f"the workers get {sorted(worker & RECEIVER_ONLY)}"
    assert WORKER_ONLY <= worker and {"OSMA_ROUTER_WEBHOOK_SECRETS"} <= receiver
    # The receiver has no key to tell live from test by: both say the mode, and agree.
    mode = re.compile(r"^OSMA_ROUTER_MODE=(\w+)$", re.M)
    modes = {mode.search((DEPLOY / f"{role}.env.example").read_text()).group(1) for role in files}  # type: ignore[union-attr]
    assert len(modes) == 1
    # Different users: the receiver cannot read the workers' environment, nor they its.
    users = {
        re.search(r"^User=(\S+)$", (DEPLOY / "systemd" / unit).read_text(), re.M).group(1)  # type: ignore[union-attr]
        for unit in ("osma-router-receiver.service", "osma-router-worker@.service")
    }
    assert len(users) == 2


def test_kubernetes_gives_the_receiver_no_upstream_credentials():
    settings = next(d for d in manifests() if d["metadata"]["name"] == "osma-router-settings")["data"]
    assert not set(settings) & WORKER_ONLY
    env = {
        role: {v["name"] for v in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        for role, d in deployments().items()
    }
    assert not env["receiver"] & WORKER_ONLY and WORKER_ONLY <= env["worker"]
    assert not env["worker"] & RECEIVER_ONLY and "OSMA_ROUTER_WEBHOOK_SECRETS" in env["receiver"]
    secrets = list(yaml.safe_load_all((KUBERNETES / "secret.example.yaml").read_text()))
    receiver_secret = next(s for s in secrets if s["metadata"]["name"] == "osma-router-receiver")
    assert not set(receiver_secret["stringData"]) & WORKER_ONLY
    assert settings["OSMA_ROUTER_MODE"] in ("live", "test")


# --- Redis users -------------------------------------------------------------------------

ACL_EXAMPLE = DEPLOY / "redis-users.acl.example"
PASSWORDS = {"receiver": "receiver-test-password", "worker": "worker-test-password"}


def acl_users() -> dict[str, list[str]]:
    users = {}
    for line in ACL_EXAMPLE.read_text().splitlines():
        words = line.split()
        assert words[0] == "user", f"an ACL file has no comments: {line!r}"
        users[words[1]] = words[2:]
    return users


def test_compose_redis_has_one_user_per_role_and_no_open_door():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    command = compose["redis"]["command"]
    aclfile = command[command.index("--aclfile") + 1]
    assert f"./redis-users.acl:{aclfile}:ro" in compose["redis"]["volumes"]
    users = acl_users()
    assert set(users) == {"default", "receiver", "worker"}
    assert users["default"][-2:] == ["-@all", "+ping"]  # before AUTH: the health check only
    receiver = users["receiver"]
    assert "-@all" in receiver and not any(rule.startswith("+@") for rule in receiver)
    assert (
        "~*" not in receiver and "resetchannels" in receiver and not any(r.startswith("&") for r in receiver)
    )
    worker = users["worker"]
    after = worker[worker.index("-@dangerous") + 1 :]  # what comes back: a few named commands
    assert after == ["+info", "+wait", "+client|setname", "+client|info"]
    assert "+@all" not in worker and "+@admin" not in worker
    for role in ("receiver", "worker"):
        url = settings_in(DEPLOY / f"{role}.env.example")
        assert "OSMA_ROUTER_REDIS_URL" in url
        text = (DEPLOY / f"{role}.env.example").read_text()
        password = next(rule[1:] for rule in users[role] if rule.startswith(">"))
        assert f"redis://{role}:{password}@redis:6379/" in text  # the example URL fits the example ACL


@pytest.fixture
def acl_redis(tmp_path) -> Iterator[tuple[Redis, dict[str, str]]]:
    """A redis-server with the deploy ACL file (test passwords) and an admin of the test's own."""
    text = ACL_EXAMPLE.read_text()
    binary = shutil.which("redis-server") or "redis-server"
    version = re.search(
        r"v=(\d+)\.(\d+)", subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    )
    if version and tuple(map(int, version.groups())) < (7, 2):
        text = text.replace(" +client|setinfo", "")  # Redis 7.2 added it (compose runs 7.2)
    for role, password in PASSWORDS.items():
        text = re.sub(rf"^(user {role} .*)>\S+", rf"\g<1>>{password}", text, flags=re.M)
    (tmp_path / "users.acl").write_text(text + "user admin on >admin-test-password ~* &* +@all\n")
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        + ["--aclfile", str(tmp_path / "users.acl")],
        stdout=log,
        stderr=log,
    )
    admin = Redis(port=port, username="admin", password="admin-test-password")
    try:
        wait_for(lambda: _pings(admin), timeout=30, what="redis-server with the deploy ACL file")
        urls = {role: f"redis://{role}:{password}@127.0.0.1:{port}/0" for role, password in PASSWORDS.items()}
        yield admin, urls
    finally:
        admin.close()
        server.terminate()
        server.wait(30)
        log.close()


def refused(admin: Redis) -> list[tuple[str, str]]:
    """(user, command or key) of every command Redis refused a role's user so far."""
    return [(e["username"], e["object"]) for e in admin.acl_log() if e.get("username") != "admin"]


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


ROUTES = """
[[routes]]
on = "task.completed"
handler = "sample.record"

[[routes]]
on = "task.completed"
handler = "sample.broken"
retries = 1
backoff = [1]

[[routes]]
on = "osmos.crm.record"
handler = "sample.record"

[connectors.crm]
header = "Authorization"
token = "env:CRM_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [{ name = "customer_id", type = "string", nullable = false }]
"""
TOKEN = "osmos-test-token-1234"


def test_each_role_works_as_its_redis_user_and_the_receiver_can_do_no_more(acl_redis, tmp_path):
    admin, urls = acl_redis
    (tmp_path / "routes.toml").write_text(ROUTES)
    common = {
        "OSMA_ROUTER_CONFIG": str(tmp_path / "routes.toml"),
        "OSMA_ROUTER_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "OSMA_ROUTER_MODE": "test",
        "CRM_OSMOS_TOKEN": TOKEN,
    }
    receiver_env = {
        **common,
        "OSMA_ROUTER_REDIS_URL": urls["receiver"],
        "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
        "OSMA_ROUTER_CAPTURE": "on",
    }
    worker_env = {**common, "OSMA_ROUTER_REDIS_URL": urls["worker"]}
    server = Server(receiver_env, tmp_path, "--workers", "2", name="acl-serve")
    try:
        server.wait_up()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answers = [http.get("/readyz").status_code]
            for n in range(3):
                body = make_event(event_id=f"evt_acl_{n}")
                for _ in range(2):  # new, then a duplicate
                    post = http.post("/webhooks/osma", content=body, headers=signature_headers(body))
                    answers.append(post.status_code)
            osmos = {"authorization": TOKEN, "content-type": "application/json"}
            batch = orjson.dumps([{"customer_id": f"cus_{n}"} for n in range(2_500)])  # several chunks
            for _ in range(2):
                answers.append(http.post("/ingest/osmos/crm", content=batch, headers=osmos).status_code)
            answers.append(http.get("/metrics").status_code)
        expected = [200, 202, 200, 202, 200, 202, 200, 202, 202, 200]
        assert answers == expected, (answers, refused(admin), server.stderr()[-2000:])
    finally:
        assert server.stop() == 0
    admin.set("test:broken", "1")  # one route fails, is retried, and lands in the failed registry
    worker = Process(["worker"], worker_env, tmp_path, "acl-worker")
    try:
        wait_for(lambda: admin.llen("rq:queue:osma-router") == 0, timeout=120, what="the worker to drain")
        healthy = osma_router(["healthcheck", "--worker"], worker_env, cwd=tmp_path)
        assert healthy.returncode == 0, healthy.stderr
        time.sleep(2)  # the retry's backoff, then its second failure
    finally:
        worker.signal()
        assert worker.wait(60) == 0, worker.stderr()
    admin.delete("test:broken")
    for args in (
        ["status"],
        ["failed", "list"],
        ["failed", "retry", "--all"],
        ["worker", "--burst"],
        ["rekey"],
        ["capture", "export", str(tmp_path / "captured.jsonl")],
        ["replay", str(tmp_path / "captured.jsonl"), "--direct", "--force"],
    ):
        done = osma_router(args, worker_env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, f"{args}: {done.stderr}"
    assert not refused(admin), (
        "a process ran a Redis command its role's user may not (add it to deploy/redis-users.acl.example "
        f"if the role really needs it): {refused(admin)}"
    )
    receiver = Redis.from_url(urls["receiver"])
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("EVAL", "return 1", "0")):
        with pytest.raises(NoPermissionError):
            receiver.execute_command(*command)
    with pytest.raises(NoPermissionError):
        receiver.set("not-ours", "1")  # only the service's own keys
    worker_client = Redis.from_url(urls["worker"])
    for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"), ("ACL", "LIST")):
        with pytest.raises(NoPermissionError):
            worker_client.execute_command(*command)
    receiver.close()
    worker_client.close()


# --- Kubernetes ----------------------------------------------------------------------------


def test_pods_carry_no_service_account_token():
    for role, deployment in deployments().items():
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, role


def test_images_are_pinned_by_digest():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    images = {image["name"]: image for image in kustomization["images"]}
    for role, deployment in deployments().items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            image = images[container["image"]]
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"]), role
            assert "newTag" not in image, "a tag can be moved; the digest cannot"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_built_manifests_name_images_by_digest():
    built = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    images = re.findall(r"^\s+image: (\S+)$", built, re.M)
    assert images and all(re.fullmatch(r"\S+@sha256:[0-9a-f]{64}", image) for image in images), images


def test_trusted_proxies_are_the_ingress_controller_only():
    settings = next(d for d in manifests() if d["metadata"]["name"] == "osma-router-settings")["data"]
    for entry in settings["OSMA_ROUTER_TRUSTED_PROXIES"].split(","):
        network = ipaddress.ip_network(entry.strip())
        assert network.prefixlen >= (24 if network.version == 4 else 64), (
            f"{network} is far more than one ingress"
        )


def policies() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in manifests() if d["kind"] == "NetworkPolicy"}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def allowed(role_labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    """The rules of every policy that selects these pods, in one direction."""
    rules = []
    for spec in policies().values():
        if selects(spec["podSelector"], role_labels) and direction.capitalize() in spec["policyTypes"]:
            rules += spec.get(direction, [])
    return rules


def test_network_policy_denies_by_default_and_opens_only_the_documented_paths():
    specs = policies()
    default = specs["default-deny"]
    assert default["podSelector"] == {} and set(default["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in default and "egress" not in default
    labels = {role: d["spec"]["template"]["metadata"]["labels"] for role, d in deployments().items()}
    # Receiver: from the ingress controller's namespace only, on its HTTP port; out to Redis and DNS.
    (ingress,) = allowed(labels["receiver"], "ingress")
    (peer,) = ingress["from"]
    assert set(peer) == {"namespaceSelector"}
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in allowed(labels["receiver"], "egress") for p in rule["ports"]}
    assert egress_ports == {6379, 6380, 53}
    # Worker: nothing in; Redis, DNS and HTTPS to public addresses out.
    assert allowed(labels["worker"], "ingress") == []
    worker_egress = allowed(labels["worker"], "egress")
    assert {p["port"] for rule in worker_egress for p in rule["ports"]} == {6379, 6380, 53, 443}
    (public,) = [rule for rule in worker_egress if rule["ports"] == [{"port": 443, "protocol": "TCP"}]]
    assert "10.0.0.0/8" in public["to"][0]["ipBlock"]["except"]
    # Redis (in-cluster): reached by osma-router's receiver and worker only.
    (redis_in,) = allowed({"app.kubernetes.io/name": "redis"}, "ingress")
    (peer,) = redis_in["from"]
    assert selects(peer["podSelector"], labels["receiver"]) and selects(peer["podSelector"], labels["worker"])
    assert not selects(
        peer["podSelector"], {"app.kubernetes.io/name": "other", **{"app.kubernetes.io/component": "worker"}}
    )
