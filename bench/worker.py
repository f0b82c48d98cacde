"""Worker benchmark: how fast `osma-router worker --burst` drains no-op handler jobs,
against plain RQ's `SimpleWorker` draining the same number of no-op jobs, in the same
run, on the same redis-server; then two workers of each against one (scale-out).

- `rq`: RQ's own `SimpleWorker` (JSON serializer, burst, logging at WARNING) in a
  subprocess, draining jobs that call `builtins.len([])` (RQ's cheapest possible job),
  queued with `Queue.enqueue_many`, `result_ttl=0` like ours.
- `osma-router`: `osma-router worker --burst`, default settings (one JSON log line per
  job, to a file), draining the jobs of N distinct `task.completed` events that one route
  sends to the built-in `noop` handler; they are queued through the receiver's own
  path (`Pipeline.admit`: routing, job building, the atomic dedup + enqueue script).

Queueing is not timed. A run is timed from the worker processes' start to the exit of the
last one; the start-up cost (the same command on an empty queue, median of the repeats)
is also measured and the report gives both the wall time and the drain time net of
start-up. After each run Redis must hold no job, queued or failed, and for osma-router
the job counters must say N succeeded; the bench exits 1 otherwise. See bench/README.md.

    python bench/worker.py                       # 5,000 jobs, 1 and 2 workers, best of 3
    python bench/worker.py --jobs 5000 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest import event_body  # bench/ingest.py: the same ~400-byte task.completed events
from redis import Redis
from rq.queue import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from receiver.keys import JOB_COUNTS_KEY, job_count_field
from receiver.model.plugins import HandlerRegistry
from receiver.model.routes import load_config
from receiver.settings import Settings
from receiver.store.connection import connect_async
from receiver.store.pipeline import build_pipeline
from receiver.store.server import RedisServer

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
ROUTES = '[[routes]]\non = "task.completed"\nhandler = "noop"\n'
QUEUE = Settings.queue_name  # "osma-router": the worker's default queue
RQ_QUEUE = "bench-rq"
ADMIT_CONCURRENCY = 512


@dataclass
class Run:
    kind: str
    workers: int
    jobs: int
    wall_s: list[float]
    startup_s: float

    @property
    def best_wall(self) -> float:
        return min(self.wall_s)

    @property
    def drain_s(self) -> float:
        return max(self.best_wall - self.startup_s, 1e-6)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.best_wall

    @property
    def net_jobs_per_s(self) -> float:
        return self.jobs / self.drain_s


def queue_rq_jobs(redis: Redis, count: int) -> None:
    queue = Queue(RQ_QUEUE, connection=redis, serializer=JSONSerializer)
    for start in range(0, count, 1000):
        with redis.pipeline() as pipe:
            queue.enqueue_many(
                [
                    Queue.prepare_data("builtins.len", args=([],), result_ttl=0)
                    for _ in range(start, min(start + 1000, count))
                ],
                pipeline=pipe,
            )
            pipe.execute()


def queue_router_jobs(settings: Settings, count: int, tag: str) -> None:
    """Queue `count` events' jobs exactly as the receiver does (routing, job builder,
    atomic dedup + enqueue script), without HTTP: the worker is what is measured."""
    config = load_config(settings.config_path, HandlerRegistry.discover())

    async def admit_all() -> None:
        redis = connect_async(settings, "receiver")
        pipeline = build_pipeline(settings, config, redis)
        received_at = datetime.now(UTC)
        gate = asyncio.Semaphore(ADMIT_CONCURRENCY)

        async def admit(serial: int) -> None:
            body = event_body(f"evt_{tag}_{serial:08d}", serial)
            async with gate:
                await pipeline.admit("osma", json.loads(body), body, received_at)

        try:
            await asyncio.gather(*(admit(n) for n in range(count)))
        finally:
            await redis.aclose()

    asyncio.run(admit_all())


def job_keys(redis: Redis) -> int:
    return sum(1 for _ in redis.scan_iter(match="rq:job:*", count=10_000))


def check_drained(redis: Redis, kind: str, count: int) -> dict[str, Any]:
    queue = RQ_QUEUE if kind == "rq" else QUEUE
    failed = FailedJobRegistry(queue, connection=redis, serializer=JSONSerializer).count
    check: dict[str, Any] = {
        "queued": redis.llen(f"rq:queue:{queue}"),
        "failed": failed,
        "job_hashes_left": job_keys(redis),
    }
    if kind == "osma-router":
        counted = redis.hget(JOB_COUNTS_KEY, job_count_field("noop", "succeeded"))
        check["succeeded"] = int(counted or 0)
    check["ok"] = (
        check["queued"] == 0
        and failed == 0
        and check["job_hashes_left"] == 0
        and check.get("succeeded", count) == count
    )
    return check


def worker_command(kind: str, url: str) -> list[str]:
    if kind == "rq":
        return [sys.executable, str(Path(__file__).resolve()), "_rq-worker", url]
    osma_router = shutil.which("osma-router", path=str(Path(sys.executable).parent)) or "osma-router"
    return [osma_router, "worker", "--burst"]


def run_workers(kind: str, workers: int, url: str, env: dict[str, str], work: Path) -> float:
    """Start `workers` burst workers at once; seconds until the last one has exited."""
    started = time.perf_counter()
    processes = []
    for n in range(workers):
        log = (work / f"{kind}-{n}.log").open("ab")
        processes.append(
            (
                subprocess.Popen(
                    worker_command(kind, url), env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    codes = []
    for process, log in processes:
        codes.append(process.wait(timeout=600))
        log.close()
    elapsed = time.perf_counter() - started
    if any(codes):
        tail = (work / f"{kind}-0.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{kind} worker exited with {codes}; its log:\n{tail}")
    return elapsed


def measure(
    kind: str,
    workers: int,
    args: argparse.Namespace,
    redis: Redis,
    settings: Settings,
    env: dict[str, str],
    work: Path,
    url: str,
    startup: float,
) -> tuple[Run, dict[str, Any]]:
    walls = []
    check: dict[str, Any] = {"ok": True}
    for repeat in range(args.repeat):
        redis.flushall()
        if kind == "rq":
            queue_rq_jobs(redis, args.jobs)
        else:
            queue_router_jobs(settings, args.jobs, f"w{workers}r{repeat}")
        walls.append(run_workers(kind, workers, url, env, work))
        check = check_drained(redis, kind, args.jobs)
        if not check["ok"]:
            break
    return Run(kind, workers, args.jobs, walls, startup), check


def startup_cost(
    kind: str, args: argparse.Namespace, redis: Redis, env: dict[str, str], work: Path, url: str
) -> float:
    redis.flushall()
    return statistics.median(run_workers(kind, 1, url, env, work) for _ in range(max(args.repeat, 3)))


def report(runs: list[Run], checks: list[dict[str, Any]], args: argparse.Namespace, stamp: str) -> None:
    print(
        f"\n{'worker':<12} {'procs':>5} {'jobs':>7} {'wall s':>7} {'jobs/s':>8} {'start s':>8}"
        f" {'net jobs/s':>10}"
    )
    for run in runs:
        print(
            f"{run.kind:<12} {run.workers:>5} {run.jobs:>7} {run.best_wall:>7.2f} {run.jobs_per_s:>8,.0f}"
            f" {run.startup_s:>8.2f} {run.net_jobs_per_s:>10,.0f}"
        )
    by = {(run.kind, run.workers): run for run in runs}
    ratios: dict[str, float] = {}
    for workers in args.workers:
        router, rq = by[("osma-router", workers)], by[("rq", workers)]
        ratios[f"osma-router/rq x{workers}"] = router.jobs_per_s / rq.jobs_per_s
        ratios[f"osma-router/rq x{workers} net"] = router.net_jobs_per_s / rq.net_jobs_per_s
    if 1 in args.workers and 2 in args.workers:
        for kind in ("osma-router", "rq"):
            ratios[f"{kind} 2/1"] = by[(kind, 2)].jobs_per_s / by[(kind, 1)].jobs_per_s
            ratios[f"{kind} 2/1 net"] = by[(kind, 2)].net_jobs_per_s / by[(kind, 1)].net_jobs_per_s
    print()
    for name, value in ratios.items():
        print(f"ratio {name:<28} {value:.2f}")
    if 1 in args.workers:
        print(
            f"goal: osma-router/rq >= 0.7 with one worker: {ratios['osma-router/rq x1']:.2f}"
            f" (net of start-up {ratios['osma-router/rq x1 net']:.2f})"
        )
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out = RESULTS / f"worker-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "started": stamp,
                "options": vars(args),
                "machine": machine,
                "ratios": ratios,
                "checks": checks,
                "runs": [
                    asdict(run) | {"jobs_per_s": run.jobs_per_s, "net_jobs_per_s": run.net_jobs_per_s}
                    for run in runs
                ],
            },
            indent=2,
        )
    )
    print(f"\nresults: {out.relative_to(BENCH.parent)}")


def rq_worker(url: str) -> int:
    """The baseline worker process: RQ's SimpleWorker as RQ documents it, nothing added."""
    redis = Redis.from_url(url)
    worker = SimpleWorker([RQ_QUEUE], connection=redis, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5_000, help="jobs queued for each run (default 5000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each case; the best counts (default 3)"
    )
    parser.add_argument(
        "--workers",
        default="1,2",
        type=lambda text: [int(n) for n in text.split(",")],
        help="comma-separated worker process counts (default 1,2)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1 or not args.workers or min(args.workers) < 1:
        parser.error("--jobs, --repeat and every --workers count must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_rq-worker"]:
        return rq_worker(argv[1])
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    runs: list[Run] = []
    checks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="osma-bench-worker-") as tmp, RedisServer() as redis_server:
        work = Path(tmp)  # the workers' cwd, so no .env file of the checkout is read
        (work / "routes.toml").write_text(ROUTES)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSMA_ROUTER_")}
        env |= {"OSMA_ROUTER_REDIS_URL": redis_server.url, "OSMA_ROUTER_CONFIG": str(work / "routes.toml")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH.parent), env.get("PYTHONPATH")]))
        settings = Settings.from_env(env, env_file=None)
        redis = Redis.from_url(redis_server.url)
        for kind in ("rq", "osma-router"):  # warm the page cache for both before timing
            redis.flushall()
            run_workers(kind, 1, redis_server.url, env, work)
        startup = {
            kind: startup_cost(kind, args, redis, env, work, redis_server.url)
            for kind in ("rq", "osma-router")
        }
        for workers in args.workers:
            for kind in ("rq", "osma-router"):
                run, check = measure(
                    kind, workers, args, redis, settings, env, work, redis_server.url, startup[kind]
                )
                verdict = "OK" if check["ok"] else "FAIL"
                print(
                    f"{kind} x{workers}: {run.jobs_per_s:,.0f} jobs/s (best of {len(run.wall_s)});"
                    f" drained: {check}: {verdict}",
                    flush=True,
                )
                runs.append(run)
                checks.append({"kind": kind, "workers": workers, **check})
        redis.close()
    report(runs, checks, args, stamp)
    return 0 if all(check["ok"] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
