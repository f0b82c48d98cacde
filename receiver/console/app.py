"""The console app: its whole HTTP surface is the `routes` list in `create_console_app`."""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..exceptions import ConfigError
from ..keys import CONSOLE_LOGOUT_PREFIX
from ..logs import configure_logging
from ..model.hosts import is_loopback
from ..model.plugins import HandlerRegistry
from ..model.routes import Config, load_config
from ..settings import Settings
from ..store.connection import connect
from . import captures, events, failed, overview
from .auth import COOKIE, SESSION_SECONDS, Sessions
from .pages import Console, PageRequest, local_path, page, render, set_session_cookie

log = logging.getLogger("osma_router.console")

STATIC = Path(__file__).with_name("static")


def login_form(page_request: PageRequest, console: Console) -> Response:
    return render(
        console,
        page_request,
        "login.html",
        title="Log in",
        next=local_path(page_request.query.get("next", "/"), "/"),
    )


def login(page_request: PageRequest, console: Console) -> Response:
    target = local_path(page_request.form.get("next", "/"), "/")
    if not console.sessions.token_matches(page_request.form.get("token")):
        log.warning("console: a login with a wrong token was refused")
        return render(
            console,
            page_request,
            "login.html",
            status=401,
            title="Log in",
            next=target,
            error="That token is not the console's token (OSMA_ROUTER_CONSOLE_TOKEN).",
        )
    cookie, _session = console.sessions.new_cookie(signed_in=True)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, page_request.request, cookie)
    log.info("console: signed in")
    return response


def logout(page_request: PageRequest, console: Console) -> Response:
    session = page_request.session
    if console.sessions.login_required and session.signed_in:
        # The cookie may have been copied: the session ends on the server too, for the
        # rest of its lifetime.
        console.redis.set(CONSOLE_LOGOUT_PREFIX + session.nonce, 1, ex=SESSION_SECONDS)
        log.info("console: signed out")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def create_console_app(settings: Settings, config: Config, queues: list[str]) -> Starlette:
    redis = connect(settings, "console")
    console = Console(
        settings=settings,
        config=config,
        redis=redis,
        sessions=Sessions(settings.console_token),
        queues=queues,
    )
    routes = [
        Route("/", page(console, overview.overview), methods=["GET"]),
        Route("/events", page(console, events.event_list), methods=["GET"]),
        Route("/events/{event_id:path}", page(console, events.event_page), methods=["GET"]),
        Route("/search", page(console, events.search), methods=["GET"]),
        Route("/jobs/{job_id}/retry", page(console, events.retry_confirm), methods=["GET"]),
        Route("/failed", page(console, failed.failed_list), methods=["GET"]),
        Route("/failed/retry-one", page(console, failed.retry_one), methods=["POST"]),
        Route("/failed/retry", page(console, failed.retry_matching_confirm), methods=["GET"]),
        Route("/failed/retry", page(console, failed.retry_matching), methods=["POST"]),
        Route("/captures", page(console, captures.captures), methods=["GET"]),
        Route("/captures/export", page(console, captures.export), methods=["POST"]),
        Route("/login", page(console, login_form, public=True), methods=["GET"]),
        Route("/login", page(console, login, public=True), methods=["POST"]),
        Route("/logout", page(console, logout, public=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return Response(f"{status}: no such page", status_code=status, media_type="text/plain")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.console = console
    return app


def check_console_host(host: str, settings: Settings) -> None:
    """The console shows what the service did and can requeue jobs: anything beyond
    loopback needs a login token."""
    if not is_loopback(host) and settings.console_token is None:
        raise ConfigError(
            f"console --host {host}: serving beyond loopback needs OSMA_ROUTER_CONSOLE_TOKEN "
            "(a long random string; make one with `osma-router keygen`)"
        )


def console_from_settings(settings: Settings) -> Starlette:
    """The console for `settings`: its routes file is read here, so a bad one fails at
    start-up with one line. Like the other operator commands it loads only the plugins
    OSMA_ROUTER_PLUGINS allows and needs no Osmos connector token."""
    registry = HandlerRegistry.discover(settings.plugins)
    config = load_config(settings.config_path, registry, tokens=False)
    queues = [settings.queue_name, *dict.fromkeys(r.queue for r in config.routes if r.queue)]
    return create_console_app(settings, config, queues)


def console_from_env() -> Starlette:
    """An ASGI factory for running the console under another server
    (`uvicorn --factory receiver.console.app:console_from_env`)."""
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    return console_from_settings(settings)
