"""Osmos ingest benchmark: what a batch costs the Redis that webhook deliveries depend on,
against a real `osma-router serve`, a real burst worker and a redis-server of its own.

For each mode (plain, and encrypted with OSMA_ROUTER_ENCRYPTION_KEYS) and batch size, with
a fresh receiver and an empty Redis, one connector of five fields (the issue's record, about
130 bytes) and one route to `noop`:

- accepting: seconds to the 202, records/s, the receiver's peak RSS growth (VmHWM after
  minus VmRSS before, from /proc);
- Redis: its growth (INFO `used_memory` after minus before) in bytes per record, beside
  the bound, 2 x body bytes + 100 bytes a record; and the longest stretch Redis was busy
  while the batch was stored (a thread PINGs it every 5 ms: other clients, webhooks
  included, waited that long);
- draining: a burst worker runs the batch's chunk jobs, then, side by side, the first
  `--webhook-sample` of the same records posted as individual signed webhooks (one no-op
  job each); records/s of each and their ratio (goal: >= 0.7);
- Redis once drained: what is left over the baseline, and how much of it is dedup marks
  (the rest should be next to nothing).

`--max-batch` instead posts one maximum batch, 250,000 records in about 256 MiB (records
of about 1 KB, just under the default body limit), and reports the receiver's peak RSS
growth: what to size its memory limit by.

Where `taskset` is there, the receiver and the worker run on CPU 0, Redis and this process
(the load) on CPU 1.

    python bench/osmos.py                          # 250k records, plain and encrypted
    python bench/osmos.py --sizes 1000,50000 --modes plain --webhook-sample 5000
    python bench/osmos.py --max-batch --modes plain
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.fernet import Fernet
from redis import Redis

from receiver.keys import OSMOS_INFLIGHT_KEY, RQ_QUEUE_PREFIX, osmos_seen_prefix
from receiver.model.signature import sign
from receiver.settings import Settings
from receiver.store.connection import connect
from receiver.store.server import RedisServer, find_redis_server, free_port
from receiver.worker.execution import WorkerRuntime
from receiver.worker.runner import run_worker

BENCH = Path(__file__).resolve().parent
TOKEN = "bench-osmos-token"
SECRET = "whsec_bench"
MAX_BODY = 268_435_456
CONNECTOR = """
[connectors.crm]
header = "Authorization"
token = "env:BENCH_OSMOS_TOKEN"
event_type = "osmos.crm.record"
key = "customer_id"
fields = [
  { name = "customer_id", type = "string", nullable = false },
  { name = "name", type = "string", nullable = false },
  { name = "email", type = "string", nullable = true },
  { name = "visits", type = "integer", nullable = true },
  { name = "score", type = "number", nullable = false },
]
"""
ROUTE = '[[routes]]\non = "osmos.crm.record"\nhandler = "noop"\n'
PINNED = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


@dataclass
class Case:
    mode: str
    records: int
    body_bytes: int
    status: int
    seconds: float
    records_per_s: float
    rss_before_mb: float
    rss_peak_growth_mb: float
    redis_growth_bytes: int
    redis_bytes_per_record: float
    bound_bytes_per_record: float
    redis_max_stall_ms: float
    drain_records_per_s: float = 0.0
    webhook_records_per_s: float = 0.0
    drain_ratio: float = 0.0
    left_after_drain_bytes: int = 0
    marks_bytes: int = 0
    check: dict[str, Any] = field(default_factory=dict)


def make_records(count: int, seed: int, notes: int = 0) -> list[dict[str, Any]]:
    """`count` records like the issue's measurement (five fields, about 130 bytes); with
    `notes`, an extra text field of about that many bytes (a maximum batch's records)."""
    rnd = random.Random(seed)
    words = ["visit", "blood", "pressure", "follow", "up", "call", "member", "plan", "note", "care"]
    texts = [
        " ".join(rnd.choice(words) for _ in range(notes // 5))[:notes] for _ in range(997 if notes else 0)
    ]
    records = []
    for i in range(count):
        record: dict[str, Any] = {
            "customer_id": f"cus_{seed}_{i:08d}",
            "name": f"Customer number {i}",
            "email": f"customer{i}@example.com" if i % 7 else None,
            "visits": rnd.randint(0, 500),
            "score": round(rnd.random() * 100, 3),
        }
        if notes:
            record["notes"] = texts[i % len(texts)]
        records.append(record)
    return records


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of `pid`, in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def on_cpu(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if PINNED else command


def start_server(command: list[str], env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[bytes]:
    log = (cwd / f"server-{port}.log").open("wb")
    server = subprocess.Popen(on_cpu(0, command), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.05)
    stop(server)
    raise RuntimeError(f"osma-router serve did not start; see its log:\n{Path(log.name).read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class StallProbe:
    """PINGs Redis every few ms from a thread; the slowest answer is how long Redis was
    busy at a stretch (a chunk's staging, the commit) while the batch was stored."""

    def __init__(self, url: str) -> None:
        self.redis = Redis.from_url(url, socket_timeout=30)
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            started = time.perf_counter()
            self.redis.ping()
            self.worst = max(self.worst, time.perf_counter() - started)

    def __enter__(self) -> StallProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self.redis.close()


def post(url: str, body: bytes, timeout: float) -> httpx.Response:
    headers = {"authorization": TOKEN, "content-type": "application/json"}
    return httpx.post(url, content=body, headers=headers, timeout=timeout)


def used_memory(redis: Redis) -> int:
    return int(redis.info("memory")["used_memory"])  # type: ignore[index]


def mark_keys(redis: Redis) -> list[bytes]:
    return list(redis.scan_iter(match=osmos_seen_prefix("crm") + "*", count=10_000))


def check_store(redis: Redis, records: int) -> dict[str, Any]:
    """One queued record per record (jobs hold chunks), one mark each, no batch left over."""
    queued = 0
    for job_id in redis.lrange(RQ_QUEUE_PREFIX + Settings.queue_name, 0, -1):
        spec = orjson.loads(redis.hget(b"rq:job:" + job_id, "data"))[2][0]  # type: ignore[arg-type]
        queued += len(spec["positions"]) if "positions" in spec else spec["records"]
    marks = sum(redis.hlen(key) for key in mark_keys(redis))  # type: ignore[misc]
    left = sum(1 for _ in redis.scan_iter(match="osma_router:osmos:batch:*", count=10_000))
    left += redis.zcard(OSMOS_INFLIGHT_KEY) + sum(
        1 for _ in redis.scan_iter(match="osma_router:osmos:holder:*")
    )
    check = {"queued": queued, "marks": marks, "batch_keys_left": left}
    check["ok"] = queued == records and marks == records and left == 0
    return check


def drain(env: dict[str, str], cwd: Path) -> float:
    """Seconds a burst worker (pinned like the receiver) takes to run every queued job."""
    command = on_cpu(0, [sys.executable, str(BENCH / "osmos.py"), "--drain-worker"])
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"the worker failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["seconds"])


def drain_worker() -> int:
    """(Run by `drain`, in its own process.) Time one burst worker from start to empty."""
    settings = Settings.from_env()
    runtime = WorkerRuntime.build(settings, connect(settings, "worker"))
    started = time.perf_counter()
    run_worker(runtime, [settings.queue_name], burst=True)
    print(json.dumps({"seconds": time.perf_counter() - started}))
    return 0


async def post_webhooks(base: str, records: list[dict[str, Any]], concurrency: int = 16) -> int:
    """The records as individual signed webhooks (one no-op job each); how many got 202."""
    received = datetime.now(UTC).isoformat()
    accepted = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(records)):
        queue.put_nowait(index)

    async def send(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            index = queue.get_nowait()
            event = {
                "id": f"evt_bench_{index}",
                "type": "osmos.crm.record",
                "object": "event",
                "created_at": received,
                "data": {"object": records[index]},
            }
            body = orjson.dumps(event)
            headers = {
                "content-type": "application/json",
                "osma-signature": sign(body, SECRET, int(time.time())),
            }
            response = await client.post("/webhooks/osma", content=body, headers=headers)
            accepted += response.status_code == 202

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(send(client) for _ in range(concurrency)))
    return accepted


def run_case(
    mode: str, count: int, args: argparse.Namespace, env: dict[str, str], work: Path, redis: Redis
) -> Case:
    records = make_records(count, seed=count, notes=900 if args.max_batch else 0)
    body = orjson.dumps(records)
    if len(body) > MAX_BODY:
        raise RuntimeError(f"the body is {len(body):,} bytes, over the limit")
    redis.flushdb()
    port = free_port()
    osma_router = shutil.which("osma-router", path=str(Path(sys.executable).parent)) or "osma-router"
    server = start_server([osma_router, "serve", "--host", "127.0.0.1", "--port", str(port)], env, work, port)
    url = f"http://127.0.0.1:{port}/ingest/osmos/crm"
    try:
        warm = post(url, orjson.dumps(make_records(1, seed=0)), 30)
        if warm.status_code != 202:
            raise RuntimeError(f"warm-up answered {warm.status_code}: {warm.text}")
        redis.flushdb()
        baseline = used_memory(redis)
        before = proc_status(server.pid)
        with StallProbe(env["OSMA_ROUTER_REDIS_URL"]) as probe:
            started = time.perf_counter()
            response = post(url, body, args.timeout)
            seconds = time.perf_counter() - started
        after = proc_status(server.pid)
        growth = used_memory(redis) - baseline
        if response.status_code != 202:
            log = (work / f"server-{port}.log").read_text()[-2000:]
            print(f"{count}: HTTP {response.status_code} {response.text[:500]}\n{log}", file=sys.stderr)
        case = Case(
            mode=mode,
            records=count,
            body_bytes=len(body),
            status=response.status_code,
            seconds=seconds,
            records_per_s=count / seconds,
            rss_before_mb=before["VmRSS"],
            rss_peak_growth_mb=after["VmHWM"] - before["VmRSS"],
            redis_growth_bytes=growth,
            redis_bytes_per_record=growth / count,
            bound_bytes_per_record=(2 * len(body) + 100 * count) / count,
            redis_max_stall_ms=probe.worst * 1000,
            check=check_store(redis, count),
        )
        case.check["ok"] = (
            case.check["ok"] and response.status_code == 202 and growth <= 2 * len(body) + 100 * count
        )
        if args.max_batch:
            return case
        del records[args.webhook_sample :]
        seconds = drain(env, work)
        case.drain_records_per_s = count / seconds
        case.marks_bytes = sum(int(redis.memory_usage(key) or 0) for key in mark_keys(redis))
        case.left_after_drain_bytes = used_memory(redis) - baseline
        redis.flushdb()
        accepted = asyncio.run(post_webhooks(f"http://127.0.0.1:{port}", records))
        seconds = drain(env, work)
        case.webhook_records_per_s = accepted / seconds
        case.drain_ratio = case.drain_records_per_s / case.webhook_records_per_s
        case.check["ok"] = case.check["ok"] and accepted == len(records)
        return case
    finally:
        stop(server)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="250000",
        type=lambda text: [int(n) for n in text.split(",")],
        help="comma-separated batch sizes (default 250000)",
    )
    parser.add_argument(
        "--modes",
        default="plain,encrypted",
        type=lambda text: text.split(","),
        help="plain, encrypted or both (default both)",
    )
    parser.add_argument(
        "--webhook-sample",
        type=int,
        default=20_000,
        help="records posted as individual webhooks for the drain ratio (default 20000)",
    )
    parser.add_argument("--max-batch", action="store_true", help="one 250,000-record batch of about 256 MiB")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for an answer")
    parser.add_argument("--drain-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_batch:
        args.sizes = [250_000]
    if any(n < 1 or n > 250_000 for n in args.sizes) or not set(args.modes) <= {"plain", "encrypted"}:
        parser.error("sizes must be 1..250000, modes plain and/or encrypted")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drain_worker:
        return drain_worker()
    if not Path("/proc/self/status").is_file():
        print("osmos.py reads peak RSS from /proc (Linux)", file=sys.stderr)
        return 1
    if PINNED:
        os.sched_setaffinity(0, {1})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    load = os.getloadavg()
    cases: list[Case] = []
    redis_server = RedisServer(binary=find_redis_server(prefer_embedded=False))
    with tempfile.TemporaryDirectory(prefix="osma-bench-osmos-") as tmp, redis_server:
        if PINNED and redis_server.process is not None:
            subprocess.run(
                ["taskset", "-pc", "1", str(redis_server.process.pid)], capture_output=True, check=False
            )
        work = Path(tmp)
        (work / "routes.toml").write_text(ROUTE + CONNECTOR)
        redis = Redis.from_url(redis_server.url)
        for mode in args.modes:
            env = {k: v for k, v in os.environ.items() if not k.startswith("OSMA_ROUTER_")}
            env |= {
                "OSMA_ROUTER_REDIS_URL": redis_server.url,
                "OSMA_ROUTER_WEBHOOK_SECRETS": SECRET,
                "OSMA_ROUTER_CONFIG": str(work / "routes.toml"),
                "OSMA_ROUTER_LOG_LEVEL": "warning",
                "BENCH_OSMOS_TOKEN": TOKEN,
            }
            if mode == "encrypted":
                env["OSMA_ROUTER_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
            for count in args.sizes:
                case = run_case(mode, count, args, env, work, redis)
                print(line(case, args), flush=True)
                cases.append(case)
        redis.close()
    report(cases, args, stamp, load)
    return 0 if all(case.check.get("ok") for case in cases) else 1


def line(c: Case, args: argparse.Namespace) -> str:
    text = (
        f"{c.mode:>9} {c.records:>7} records, {c.body_bytes / 1e6:.1f} MB: {c.seconds:.2f} s "
        f"({c.records_per_s:,.0f}/s), RSS {c.rss_before_mb:,.0f} MB"
        f" +{c.rss_peak_growth_mb:,.0f} MB at the peak; "
        f"Redis +{c.redis_bytes_per_record:.0f} B a record (bound {c.bound_bytes_per_record:.0f}), "
        f"busy <= {c.redis_max_stall_ms:.0f} ms at a stretch"
    )
    if not args.max_batch:
        text += (
            f"; drain {c.drain_records_per_s:,.0f}/s vs {c.webhook_records_per_s:,.0f}/s as webhook jobs "
            f"(x{c.drain_ratio:.1f}); after draining +{c.left_after_drain_bytes / 1e6:.1f} MB "
            f"({c.marks_bytes / 1e6:.1f} MB of it dedup marks)"
        )
    return text + f"; store {'OK' if c.check.get('ok') else 'FAIL ' + json.dumps(c.check)}"


def report(cases: list[Case], args: argparse.Namespace, stamp: str, load: tuple[float, float, float]) -> None:
    print(
        f"\n{'mode':>9} {'records':>8} {'MB':>6} {'accept s':>8} {'RSS +MB':>8} {'Redis B/rec':>11} "
        f"{'bound':>6} {'stall ms':>8} {'drain x':>8} {'left MB':>8} {'marks MB':>8}"
    )
    for c in cases:
        print(
            f"{c.mode:>9} {c.records:>8} {c.body_bytes / 1e6:>6.1f} {c.seconds:>8.2f} "
            f"{c.rss_peak_growth_mb:>8,.0f} {c.redis_bytes_per_record:>11.0f} "
            f"{c.bound_bytes_per_record:>6.0f} "
            f"{c.redis_max_stall_ms:>8.0f} {c.drain_ratio:>8.1f} {c.left_after_drain_bytes / 1e6:>8.1f} "
            f"{c.marks_bytes / 1e6:>8.1f}"
        )
    machine = {
        "cpus": os.cpu_count(),
        "pinned": PINNED,
        "load_average_at_start": load,
        "load_average_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "orjson": orjson.__version__,
    }
    print(
        f"\nload average: {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; pinned: {PINNED}"
    )
    (BENCH / "results").mkdir(exist_ok=True)
    out = BENCH / "results" / f"osmos-{stamp}.json"
    options = {k: v for k, v in vars(args).items() if k != "drain_worker"}
    out.write_text(
        json.dumps(
            {"started": stamp, "options": options, "machine": machine, "cases": [asdict(c) for c in cases]},
            indent=2,
        )
    )
    print(f"results: {out.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    sys.exit(main())
