"""What every console page shares: templates, the session, forms and CSRF checks.

Pages are plain functions `(request, console) -> Response`, run in Starlette's thread
pool (they read Redis with the sync client). `page()` wraps one: without a token it
answers only requests addressed to a loopback name (a web page whose name an attacker
points at 127.0.0.1, "DNS rebinding", gets nothing); it opens the session, sends a
signed-out browser to the login form, and for a POST checks the CSRF token before the
page runs. A Redis that does not answer is a 503 page, not a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from redis import Redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..keys import CONSOLE_LOGOUT_PREFIX
from ..model.hosts import is_loopback
from ..model.routes import Config
from ..settings import Settings
from ..store.connection import UNAVAILABLE
from .auth import COOKIE, SESSION_SECONDS, Session, Sessions

log = logging.getLogger("osma_router.console")

TEMPLATES = Path(__file__).with_name("templates")
MAX_FORM_BYTES = 64 * 1024


@dataclass
class Console:
    """What the pages read: settings, routes, Redis and the session keys."""

    settings: Settings
    config: Config
    redis: Redis
    sessions: Sessions
    queues: list[str]
    templates: Environment = field(
        default_factory=lambda: Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True)
        )
    )


@dataclass
class Form:
    """The fields of a urlencoded form (the first value of each)."""

    fields: dict[str, str]

    def get(self, key: str, default: Any = "") -> Any:
        return self.fields.get(key, default)


class PageRequest:
    """A request with its session and form, as a page sees it."""

    def __init__(self, request: Request, session: Session, form: Form) -> None:
        self.request = request
        self.session = session
        self.form = form
        self.query = request.query_params
        self.path_params = request.path_params


PageFunc = Callable[[PageRequest, Console], Response]


def render(
    console: Console, page: PageRequest | None, template: str, status: int = 200, **values: Any
) -> Response:
    html = console.templates.get_template(template).render(
        csrf=page.session.csrf if page else "",
        login_required=console.sessions.login_required,
        path=page.request.url.path if page else "",
        **values,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


# The pages use no script from elsewhere, no frames and no inline script.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def local_path(target: str, default: str) -> str:
    """`target` when it is a path on this console, else `default`: never a redirect off
    it (`//host`, a scheme, or a backslash, which browsers read as a slash)."""
    safe = target.startswith("/") and not target.startswith("//")
    if not safe or "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    return target


def set_session_cookie(response: Response, request: Request, cookie: str) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


async def read_form(request: Request) -> Form:
    if request.method != "POST":
        return Form({})
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return Form({})
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return Form({name: values[0] for name, values in parsed.items()})


def page(console: Console, func: PageFunc, *, public: bool = False) -> Callable[[Request], Any]:
    """An endpoint for `func`: session, login redirect, CSRF check, then the page."""

    async def endpoint(request: Request) -> Response:
        if not console.sessions.login_required and not is_loopback(request.url.hostname or ""):
            return HTMLResponse(
                "<h1>400</h1><p>Without OSMA_ROUTER_CONSOLE_TOKEN this console answers only "
                "requests to 127.0.0.1, [::1] or localhost.</p>",
                status_code=400,
                headers=SECURITY_HEADERS,
            )
        session = console.sessions.open(request.cookies.get(COOKIE))
        if session is not None and session.signed_in and console.sessions.login_required:
            session = None if await run_in_threadpool(_signed_out, console, session) else session
        new_cookie = None
        if session is None:
            new_cookie, session = console.sessions.new_cookie(signed_in=False)
        if not public and not session.signed_in:
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            response: Response = RedirectResponse(f"/login?next={target}", status_code=303)
        else:
            form = await read_form(request)
            if request.method == "POST" and not console.sessions.csrf_matches(session, form.get("csrf")):
                log.warning(
                    "console: a form without a valid CSRF token was refused", extra={"path": request.url.path}
                )
                response = HTMLResponse(
                    "<h1>403</h1><p>This form is stale or did not come from the console. "
                    "Go back, reload the page and try again.</p>",
                    status_code=403,
                    headers=SECURITY_HEADERS,
                )
            else:
                response = await run_in_threadpool(_run, func, PageRequest(request, session, form), console)
        if new_cookie is not None and COOKIE not in response.headers.get("set-cookie", ""):
            set_session_cookie(response, request, new_cookie)
        return response

    return endpoint


def _signed_out(console: Console, session: Session) -> bool:
    """Whether "Log out" ended this session (its cookie may live on in a copy). Without
    Redis nothing can be read or changed anyway: the page then answers 503."""
    try:
        return bool(console.redis.exists(CONSOLE_LOGOUT_PREFIX + session.nonce))
    except UNAVAILABLE:
        return False


def _run(func: PageFunc, page_request: PageRequest, console: Console) -> Response:
    try:
        return func(page_request, console)
    except UNAVAILABLE as exc:
        log.warning("console: Redis did not answer", extra={"error": type(exc).__name__})
        return render(
            console,
            page_request,
            "unavailable.html",
            status=503,
            title="Redis does not answer",
            error=type(exc).__name__,
        )
