"""What the fake Osma and OGSM servers share: a record of every request, failures a
test asks for, per-second request counts, and serving on a loopback port.

Tests talk to a fake through its Python methods (`fail`, `slow`, `requests`, seeding)
from the test's thread while uvicorn serves it from another, so state sits behind a lock.
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .server import LiveServer

Handler = Callable[[Request, Any], Awaitable[Response]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it, with the status it answered."""

    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class Fault:
    """A failure to inject into the next `times` matching requests.

    `status` answers without doing anything (a 503, a 429 with `retry_after`, a 400 with
    `body`), or with `after` does the work first and then answers `status` (the effect
    happens, the answer is lost). `delay` waits that long before handling, or with
    `after` once the work is done (the answer comes late: a client timeout loses it).
    """

    times: float
    method: str | None = None
    path: str | None = None
    status: int | None = None
    retry_after: str | None = None
    body: Any = None
    delay: float = 0.0
    after: bool = False
    cached: bool = True  # the fake Osma keeps this answer under the request's idempotency key
    held: Hold | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or fnmatch.fnmatchcase(path, self.path)


@dataclass
class Hold:
    """A request the fake keeps waiting, unanswered and not yet carried out, until
    `release()`: an upstream that has received a call and not finished it."""

    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def wait_until_arrived(self, timeout: float = 30.0) -> None:
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no request reached the held endpoint within {timeout:g} s")

    def release(self) -> None:
        self.released.set()


@dataclass
class Seen:
    """What `record` needs from a request once it is answered."""

    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    generation: int
    at: float = field(default_factory=time.time)


class FakeService:
    """Base of the fakes: recording, faults, serving. Subclasses add `routes()`."""

    name = "fake"
    prefix = ""  # of every route's path

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._request_ids = itertools.count(1)
        self._generation = 0  # bumped by reset(): a late answer of an earlier test is not recorded
        self._server: LiveServer | None = None
        self.app = Starlette(routes=self.routes())

    def routes(self) -> list[Any]:
        raise NotImplementedError

    # --- serving ------------------------------------------------------------------------

    def start(self, port: int | None = None) -> Self:
        """Serve on loopback `port`, or a free one (real uvicorn, in a thread)."""
        self._server = LiveServer(self.app, port).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {self.name} is not started: call start()")
        return self._server.url

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests ask for -------------------------------------------------------------

    def fail(
        self,
        status: int = 503,
        *,
        times: float = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | str | None = None,
        body: Any = None,
        after: bool = False,
        cached: bool = True,
    ) -> None:
        """Answer the next `times` matching requests with `status` (`float("inf")`: always);
        with `after=True` the request is carried out first (its answer is what fails).

        `path` is a glob on the request path, e.g. `"/api/v2/indicator_reports.json"`.
        `cached=False` (fake Osma): the failure is not kept under the request's
        idempotency key, as real Osma would keep it; a gentler fake for tests that want one.
        """
        with self.lock:
            self._faults.append(
                Fault(
                    times=times,
                    method=method,
                    path=path,
                    status=status,
                    after=after,
                    retry_after=None if retry_after is None else str(retry_after),
                    body=body,
                    cached=cached,
                )
            )

    def slow(
        self,
        seconds: float,
        *,
        times: float = 1,
        after: bool = False,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Delay the next `times` matching answers; `after=True` does the work first."""
        with self.lock:
            self._faults.append(Fault(times=times, method=method, path=path, delay=seconds, after=after))

    def hold(self, *, method: str | None = None, path: str | None = None) -> Hold:
        """Keep the next matching request waiting until the returned `Hold` is released;
        then carry it out and answer it as usual."""
        held = Hold()
        with self.lock:
            self._faults.append(Fault(times=1, method=method, path=path, held=held))
        return held

    def heal(self) -> None:
        """Forget every fault not yet used."""
        with self.lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget requests and faults (subclasses also forget their resources)."""
        with self.lock:
            self._requests.clear()
            self._faults.clear()
            self._generation += 1

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str = "*") -> list[RecordedRequest]:
        """The recorded requests of `method` whose path matches the glob `path`."""
        return [r for r in self.requests if r.method == method.upper() and fnmatch.fnmatchcase(r.path, path)]

    def max_per_second(self, endpoint: str | None = None, window: float = 1.0) -> int:
        """The most requests (to `endpoint`, or any) that arrived within any `window` seconds."""
        times = sorted(r.at for r in self.requests if endpoint is None or r.endpoint == endpoint)
        best, start = 0, 0
        for end, moment in enumerate(times):
            while moment - times[start] >= window:
                start += 1
            best = max(best, end - start + 1)
        return best

    # --- used by subclasses -------------------------------------------------------------

    def next_request_id(self) -> str:
        with self.lock:
            return f"req_fake_{next(self._request_ids):06d}"

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    async def seen(self, request: Request, endpoint: str) -> Seen:
        return Seen(
            request.method,
            request.url.path,
            endpoint,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            await request.body(),
            self._generation,
        )

    def record(self, seen: Seen, status: int) -> None:
        with self.lock:
            if seen.generation != self._generation:
                return
            self._requests.append(
                RecordedRequest(
                    seen.method,
                    seen.path,
                    seen.endpoint,
                    seen.query,
                    seen.headers,
                    seen.body,
                    status,
                    seen.at,
                )
            )

    def route(self, path: str, **by_method: Any) -> Route:
        """A route under `prefix` whose requests are recorded, may meet a fault, and are
        otherwise answered by `answer` with the operation given for their method."""
        endpoint = f"{{method}} {path.replace('{id}', ':id')}"

        async def serve(request: Request) -> Response:
            operation = by_method[request.method]
            return await self.run(
                request,
                endpoint.format(method=request.method),
                lambda seen: self.answer(seen, path, request.path_params, operation),
            )

        return Route(self.prefix + path, serve, methods=list(by_method))

    def answer(self, seen: Seen, path: str, path_params: dict[str, str], operation: Any) -> Response:
        """Carry out `operation` for a request that met no fault (checks first: auth, ...)."""
        raise NotImplementedError

    def fault_response(self, fault: Fault) -> Response:
        """The answer to a request that met a fault with a `status`."""
        raise NotImplementedError

    def faulted(self, seen: Seen, fault: Fault) -> Response:
        """Answer a request that met a fault (the fake Osma also remembers the answer)."""
        return self.fault_response(fault)

    async def run(self, request: Request, endpoint: str, handle: Callable[[Seen], Response]) -> Response:
        """Record the request, apply a matching fault, else let `handle` answer."""
        seen = await self.seen(request, endpoint)
        fault = self.take_fault(seen.method, seen.path)
        if fault is not None and fault.held is not None:
            fault.held.arrived.set()
            while not fault.held.released.is_set():
                await asyncio.sleep(0.01)
            fault = None
        if fault is None:
            response = handle(seen)
        else:
            if fault.delay and not fault.after:
                await asyncio.sleep(fault.delay)
            if fault.status is None or fault.after:
                response = handle(seen)
            if fault.status is not None:
                response = self.faulted(seen, fault)
            if fault.delay and fault.after:
                await asyncio.sleep(fault.delay)
        self.record(seen, response.status_code)
        return response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")
