"""deploy/: what can be checked without a Docker engine or a cluster.

The manifests parse and agree with each other and with the service (commands our CLI
accepts, ports, probe paths, setting names); the Dockerfile's build installs from
exactly the files it copies, and its command and healthcheck run; the systemd units'
ExecStartPre/ExecStart run from a virtualenv with the units' environment."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from receiver.cli.main import build_parser
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import load_config
from receiver.settings import VARIABLES
from receiver.store.server import free_port
from tests.ops_support import Process, Server, wait_for
from tests.support import OSMA_ROUTER, ROOT, SECRET, subprocess_env

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CONTRACT = ROOT / "docs" / "contract.md"
OTHER_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR", "WEBHOOK_DOMAIN"}


def known_settings() -> set[str]:
    """Every OSMA_ROUTER_* variable the service reads, or the contract names."""
    return set(VARIABLES) | set(re.findall(r"`(OSMA_ROUTER_[A-Z_]+)`", CONTRACT.read_text()))


def command_of(args: list[str]) -> str:
    """The subcommand our CLI runs for `osma-router ARGS`; argparse exits on anything else."""
    parsed = build_parser().parse_args(args)
    return str(parsed.func.__name__)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def env_example(name: str) -> dict[str, str]:
    """The settings of deploy/NAME.example (the env file an operator fills in)."""
    lines = (DEPLOY / f"{name}.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def check_variables(names: set[str]) -> None:
    unknown = {n for n in names if n not in known_settings() and n not in OTHER_VARIABLES}
    assert not unknown, f"not a setting of the service: {sorted(unknown)}"


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_is_multi_stage_slim_and_non_root():
    instructions = dockerfile()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) == 2 and all("-slim" in stage for stage in stages)
    final = instructions[[i for i, (k, _) in enumerate(instructions) if k == "FROM"][-1] :]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(k == "COPY" and rest.startswith("--from=build") for k, rest in final)
    assert not any(
        k == "RUN" and "pip install" in rest for k, rest in final
    )  # nothing built in the final stage


def test_dockerfile_commands_are_ours():
    instructions = dict(dockerfile())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    cmd = json.loads(instructions["CMD"])
    healthcheck = json.loads(instructions["HEALTHCHECK"].split("CMD", 1)[1])
    assert entrypoint == ["osma-router"] and healthcheck[0] == "osma-router"
    assert command_of(cmd) == "cmd_serve" and command_of(healthcheck[1:]) == "cmd_healthcheck"
    port = option(cmd, "--port")
    assert instructions["EXPOSE"] == port and f":{port}/healthz" in option(healthcheck, "--url")
    assert instructions["STOPSIGNAL"] == "SIGTERM"


def pip_commands(instructions: list[tuple[str, str]]) -> list[str]:
    """Each pip command of the RUN instructions, in order."""
    commands = []
    for keyword, rest in instructions:
        if keyword == "RUN":
            commands += [c.strip() for c in rest.split("&&") if re.search(r"/pip (install|wheel) ", c)]
    return commands


def test_dockerfile_installs_third_party_code_only_from_the_lock():
    """Every package file pip fetches is checked against requirements/ (issue: supply chain)."""
    instructions = dockerfile()
    build = instructions[: [i for i, (k, _) in enumerate(instructions) if k == "FROM"][1]]
    commands = pip_commands(build)
    fetching = [c for c in commands if " install " in c and "--no-deps" not in c]
    app, tools = "/opt/osma-router/venv/bin/pip", "/opt/build-tools/bin/pip"
    assert fetching == [
        f"{app} install --require-hashes --only-binary=:all: -r requirements/runtime.txt",
        f"{tools} install --require-hashes -r requirements/build.txt",
    ]
    # The project: built by the locked setuptools, installed with nothing else.
    assert f"{tools} wheel --no-deps --no-build-isolation" in commands[2]
    assert commands[3].startswith(f"{app} install --no-deps /tmp/dist/")
    copies = [rest for keyword, rest in build if keyword == "COPY"]
    assert copies[0] == "requirements/runtime.txt requirements/build.txt ./requirements/"
    # The build context lets through exactly what is copied.
    allowed = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for rest in copies:
        for source in rest.split()[:-1]:
            assert f"!{source}" in allowed or f"!{source}/**" in allowed, f"{source}: not in the context"


def test_dockerfile_build_installs_from_exactly_the_copied_files(tmp_path):
    """The build stage's `pip install .`, done offline from a copy of what COPY takes."""
    context = tmp_path / "context"
    context.mkdir()
    for keyword, rest in dockerfile():
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such file in the repository"
                target = context / source
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, target)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("osma_router-*.whl")))
    names = wheel.namelist()
    assert "receiver/cli/__init__.py" in names and "handlers/__init__.py" in names
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "osma-router = receiver.cli:main" in entry_points


def test_dockerfile_command_and_healthcheck_run(tmp_path, redis, redis_server):
    instructions = dockerfile()
    image_env = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            image_env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    cmd = json.loads(dict(instructions)["CMD"])
    healthcheck = json.loads(dict(instructions)["HEALTHCHECK"].split("CMD", 1)[1])
    env = {k: v for k, v in image_env.items() if k.startswith("OSMA_ROUTER_")}
    env.update(OSMA_ROUTER_REDIS_URL=redis_server.url, OSMA_ROUTER_WEBHOOK_SECRETS=SECRET)
    # Loopback and a free port instead of 0.0.0.0:8000; the rest exactly as in the image.
    port, image_port = free_port(), option(cmd, "--port")
    loopback = {"0.0.0.0": "127.0.0.1", image_port: str(port)}
    server = Server(env, tmp_path, name="docker-cmd", args=[loopback.get(a, a) for a in cmd], port=port)
    try:
        server.wait_up()
        probe = [a.replace(f":{image_port}/", f":{port}/") for a in healthcheck[1:]]
        result = subprocess.run(
            [*OSMA_ROUTER, *probe],
            env=subprocess_env(env),
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    finally:
        assert server.stop() == 0


# --- compose.yaml ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_redis_with_aof_receiver_workers_and_caddy():
    services = compose()["services"]
    assert set(services) == {"redis", "receiver", "worker", "caddy"}
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--appendfsync") + 1] in ("everysec", "always")
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])
    receiver, worker = services["receiver"], services["worker"]
    assert command_of(receiver["command"]) == "cmd_serve" and command_of(worker["command"]) == "cmd_worker"
    assert (DEPLOY / receiver["build"]["context"] / receiver["build"]["dockerfile"]).is_file()
    assert (receiver["env_file"], worker["env_file"]) == ("receiver.env", "worker.env")
    for service in (receiver, worker):
        # Redis as the role's own user, from the role's own env file (the URL holds a password).
        url = urlsplit(env_example(service["env_file"])["OSMA_ROUTER_REDIS_URL"])
        assert (url.username, url.hostname, url.port) == (service["env_file"][:-4], "redis", 6379)
        assert "OSMA_ROUTER_REDIS_URL" not in service["environment"]
        probe = service["healthcheck"]["test"]
        assert probe[:2] == ["CMD", "osma-router"] and command_of(probe[2:]) == "cmd_healthcheck"
        assert _seconds(service["stop_grace_period"]) >= 30
        for volume in service["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).is_file()
    assert "--worker" in worker["healthcheck"]["test"]
    port = option(receiver["command"], "--port")
    assert receiver["expose"] == [port]
    assert "/readyz" in " ".join(receiver["healthcheck"]["test"])
    # Caddy proxies to that port and is the only proxy the receiver believes.
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert f"reverse_proxy receiver:{port}" in caddyfile
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in services["caddy"]["volumes"]
    subnet = compose()["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert receiver["environment"]["OSMA_ROUTER_TRUSTED_PROXIES"] == subnet
    names = set()
    for service in (receiver, worker):
        names |= set(service["environment"])
    names |= set(env_example("receiver.env")) | set(env_example("worker.env"))
    check_variables(names)


def _seconds(value: str) -> float:
    return float(value.rstrip("s"))


def test_deploy_routes_file_loads():
    config = load_config(DEPLOY / "osma-router.toml", HandlerRegistry.discover())
    assert config.routes


# --- Kubernetes --------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]
    return documents


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def test_kubernetes_has_every_piece():
    kinds = sorted(d["kind"] for d in manifests())
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Service",
            "Ingress",
            "Ingress",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "HorizontalPodAutoscaler",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodDisruptionBudget",
        ]
    )


def test_kubernetes_receiver_probes_ports_and_ingress_agree():
    documents = manifests()
    deployment = find(documents, "Deployment", "osma-router-receiver")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert command_of(container["args"]) == "cmd_serve"
    port = container["ports"][0]
    assert str(port["containerPort"]) == option(container["args"], "--port")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = find(documents, "Service", "osma-router-receiver")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    paths = []
    for ingress in (d for d in documents if d["kind"] == "Ingress"):
        assert ingress["spec"]["tls"][0]["secretName"]
        assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]
        paths += ingress["spec"]["rules"][0]["http"]["paths"]
    assert {p["path"] for p in paths} == {"/webhooks", "/ingest/osmos"}  # never /metrics
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]


def test_kubernetes_worker_hpa_and_pdb_agree():
    documents = manifests()
    worker = find(documents, "Deployment", "osma-router-worker")
    spec = worker["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert command_of(container["args"]) == "cmd_worker"
    assert command_of(container["livenessProbe"]["exec"]["command"][1:]) == "cmd_healthcheck"
    settings = find(documents, "ConfigMap", "osma-router-settings")["data"]
    assert spec["terminationGracePeriodSeconds"] > float(settings["OSMA_ROUTER_SHUTDOWN_GRACE"])
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    for hpa in (d for d in documents if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] >= 2
    for pdb in (d for d in documents if d["kind"] == "PodDisruptionBudget"):
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert any(d["spec"]["template"]["metadata"]["labels"] == labels for d in deployments.values())


def test_kubernetes_settings_and_secrets():
    documents = manifests()
    examples = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((KUBERNETES / "secret.example.yaml").read_text())
    }
    assert all(d["kind"] == "Secret" for d in examples.values())
    secret_keys = set().union(*(set(d["stringData"]) for d in examples.values()))
    names = set(find(documents, "ConfigMap", "osma-router-settings")["data"]) | secret_keys
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": "osma-router-settings"}} in container["envFrom"]
        for variable in container["env"]:
            ref = variable["valueFrom"]["secretKeyRef"]
            # Each role reads only its own Secret.
            assert ref["name"] == deployment["metadata"]["name"]
            assert ref["key"] in examples[ref["name"]]["stringData"]
            names.add(variable["name"])
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    check_variables(names)
    for name in ("OSMA_ROUTER_WEBHOOK_SECRETS", "OSMA_ROUTER_REDIS_URL", "OSMA_ROUTER_OGSM_PASSWORD"):
        assert name in secret_keys  # secrets never sit in the ConfigMap
    routes = find(documents, "ConfigMap", "osma-router-routes")["data"]["osma-router.toml"]
    mounted = find(documents, "ConfigMap", "osma-router-settings")["data"]["OSMA_ROUTER_CONFIG"]
    assert mounted == "/etc/osma-router/osma-router.toml"
    path = Path(mounted)
    assert routes.strip()
    assert path.name == "osma-router.toml"


def test_kubernetes_routes_configmap_loads(tmp_path):
    routes = find(manifests(), "ConfigMap", "osma-router-routes")["data"]["osma-router.toml"]
    (tmp_path / "osma-router.toml").write_text(routes)
    assert load_config(tmp_path / "osma-router.toml", HandlerRegistry.discover()).routes


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds():
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert all(d["metadata"].get("namespace") == "osma-router" for d in built if d["kind"] != "Namespace")


# --- systemd -------------------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    """A unit file's settings (keys may repeat, as Environment= does)."""
    entries: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def unit_environment(entries: dict[str, list[str]], redis_url: str) -> dict[str, str]:
    """The unit's environment: its own env file's example, then its Environment= lines."""
    (env_file,) = entries["EnvironmentFile"]
    assert env_file.startswith("/etc/osma-router/")
    env = env_example(Path(env_file).name)
    for value in entries.get("Environment", []):
        key, _, val = value.partition("=")
        env[key] = val
    # What an operator fills in, and where this machine keeps the files.
    env["OSMA_ROUTER_REDIS_URL"] = redis_url
    if "OSMA_ROUTER_WEBHOOK_SECRETS" in env:  # the receiver's; workers run without them
        env["OSMA_ROUTER_WEBHOOK_SECRETS"] = SECRET
    assert env["OSMA_ROUTER_CONFIG"] == "/etc/osma-router/osma-router.toml"
    env["OSMA_ROUTER_CONFIG"] = str(DEPLOY / "osma-router.toml")
    return {k: v for k, v in env.items() if v}


def in_venv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "/opt/osma-router/venv/bin/osma-router"
    return [str(Path(sys.prefix) / "bin" / "osma-router"), *words[1:]]


def test_systemd_receiver_unit_runs(tmp_path, redis, redis_server):
    entries = unit("osma-router-receiver.service")
    env = unit_environment(entries, redis_server.url)
    check_variables(set(env))
    assert "127.0.0.1" in env["OSMA_ROUTER_TRUSTED_PROXIES"].split(",")
    pre = in_venv(entries["ExecStartPre"][0])
    result = subprocess.run(
        pre, env=subprocess_env(env), cwd=tmp_path, check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "configuration OK" in result.stdout, result.stderr
    start = in_venv(entries["ExecStart"][0])
    assert command_of(start[1:]) == "cmd_serve"
    port = option(start, "--port")
    assert f"reverse_proxy 127.0.0.1:{port}" in (SYSTEMD / "Caddyfile").read_text()
    assert float(entries["TimeoutStopSec"][0]) > 20  # uvicorn's graceful shutdown
    new_port = free_port()
    server = Server(
        env,
        tmp_path,
        name="unit-serve",
        port=new_port,
        args=[a if a != port else str(new_port) for a in start[1:]],
    )
    try:
        server.wait_up()
    finally:
        assert server.stop() == 0


def test_systemd_worker_unit_runs_and_stops_on_sigterm(tmp_path, redis, redis_server):
    entries = unit("osma-router-worker@.service")
    env = unit_environment(entries, redis_server.url)
    check_variables(set(env))
    assert float(entries["TimeoutStopSec"][0]) > float(env["OSMA_ROUTER_SHUTDOWN_GRACE"])
    start = in_venv(entries["ExecStart"][0])
    assert command_of(start[1:]) == "cmd_worker"
    worker = Process(start[1:], env, tmp_path, "unit-worker")
    try:
        # Idle means its loop runs, so RQ's SIGTERM handling is in place.
        wait_for(
            lambda: any(redis.hget(key, "state") == b"idle" for key in redis.smembers("rq:workers")),
            timeout=30,
            what="the worker to start working",
        )
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.stop()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["osma-router-receiver.service", "osma-router-worker@.service"])
def test_systemd_analyze_verify(tmp_path, name):
    text = (SYSTEMD / name).read_text().replace("/opt/osma-router/venv", sys.prefix)
    (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


# --- Procfile ------------------------------------------------------------------------------


def test_procfile_commands_are_ours():
    text = (ROOT / "Procfile").read_text().replace("$PORT", "5000")  # the platform sets PORT
    processes = dict(line.split(":", 1) for line in text.splitlines() if line.strip())
    assert command_of(shlex.split(processes["web"])[1:]) == "cmd_serve"
    assert command_of(shlex.split(processes["worker"])[1:]) == "cmd_worker"
