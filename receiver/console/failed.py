"""Failed jobs: the `failed list` table with filters, and retries (one, or every job a
filter matches) through the same code as `osma-router failed retry`."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from rq.exceptions import NoSuchJobError
from starlette.responses import RedirectResponse, Response

from ..exceptions import NoSuchFailedJob
from ..store.failed import FailedJob, FailedJobs
from .pages import Console, PageRequest, local_path, render

log = logging.getLogger("osma_router.console")

MAX_ROWS = 500  # the table and "retry all matching" hold at most this many failed jobs
MAX_READ = 2_000  # failed jobs read for one page, at most (a filter that matches few)
CHUNK = 100  # job ids read from a registry per command


@dataclass(frozen=True)
class FailedFilter:
    handler: str = ""
    error: str = ""
    event: str = ""

    @classmethod
    def read(cls, values: Mapping[str, str]) -> FailedFilter:
        get = values.get
        return cls(
            handler=str(get("handler", "") or "").strip(),
            error=str(get("error", "") or "").strip(),
            event=str(get("event", "") or "").strip(),
        )

    def matches(self, job: FailedJob) -> bool:
        return (
            (not self.handler or job.handler == self.handler)
            and (not self.error or self.error.lower() in job.last_error.lower())
            and (not self.event or job.event_id == self.event)
        )

    def query(self) -> str:
        return urlencode({k: v for k, v in vars(self).items() if v})


def newest_failed_ids(jobs: FailedJobs) -> Iterator[str]:
    """The ids in every queue's failed registry, newest first, CHUNK at a time: a registry
    of millions is never read whole (RQ's own `get_job_ids()` would)."""
    for registry in jobs.registries.values():
        start = 0
        while True:
            ids = registry.get_job_ids(start, start + CHUNK - 1, desc=True, cleanup=False)
            yield from ids
            if len(ids) < CHUNK:
                break
            start += CHUNK


def matching(console: Console, chosen: FailedFilter) -> tuple[list[FailedJob], bool]:
    """Failed jobs the filter matches: at most MAX_ROWS, of the newest MAX_READ; True when
    there may be more."""
    jobs = FailedJobs(console.redis, console.queues, mask=True)
    rows: list[FailedJob] = []
    for read, job_id in enumerate(newest_failed_ids(jobs)):
        if read == MAX_READ or len(rows) == MAX_ROWS:
            return rows, True
        try:
            job = jobs.get(job_id)
        except (NoSuchFailedJob, NoSuchJobError):
            continue  # retried or expired since its id was read
        if chosen.matches(job):
            rows.append(job)
    return rows, False


def failed_list(page: PageRequest, console: Console) -> Response:
    chosen = FailedFilter.read(page.query)
    rows, more = matching(console, chosen)
    handlers = sorted({route.handler for route in console.config.routes})
    return render(
        console,
        page,
        "failed.html",
        title="Failed jobs",
        rows=rows,
        more=more,
        max_rows=MAX_ROWS,
        max_read=MAX_READ,
        chosen=chosen,
        handlers=handlers,
        notice=page.query.get("notice", ""),
    )


def retry_one(page: PageRequest, console: Console) -> Response:
    job_id = page.form.get("job_id")
    back = local_path(page.form.get("back"), "/failed")
    try:
        FailedJobs(console.redis, console.queues, mask=True).retry(job_id)
    except NoSuchFailedJob:
        notice = f"job {job_id} is not in the failed registry any more (retried already?)"
    else:
        log.info("console: failed job requeued", extra={"job_id": job_id})
        notice = f"requeued {job_id}"
    separator = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{separator}{urlencode({'notice': notice})}", status_code=303)


def retry_matching_confirm(page: PageRequest, console: Console) -> Response:
    chosen = FailedFilter.read(page.query)
    rows, more = matching(console, chosen)
    return render(
        console,
        page,
        "failed_confirm.html",
        title="Retry failed jobs",
        rows=rows,
        more=more,
        chosen=chosen,
        max_rows=MAX_ROWS,
    )


def retry_matching(page: PageRequest, console: Console) -> Response:
    chosen = FailedFilter.read(page.form.fields)
    rows, _more = matching(console, chosen)
    failed = FailedJobs(console.redis, console.queues, mask=True)
    requeued = gone = 0
    for job in rows:
        try:
            failed.retry(job.job_id)
            requeued += 1
        except NoSuchFailedJob:
            gone += 1
    log.info("console: failed jobs requeued", extra={"count": requeued})
    notice = f"requeued {requeued} failed job(s)" + (
        f"; {gone} had already left the registry" if gone else ""
    )
    return RedirectResponse(f"/failed?{urlencode({'notice': notice})}", status_code=303)
