"""uvicorn writes no access lines for the receiver (its own delivery lines carry the event
id), and it does not even format them: its HTTP protocol builds an access line (client
address, path) for every answer whenever the `uvicorn.access` logger has a handler
anywhere up its tree, even one whose level drops the line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from receiver.logs import configure_logging


@pytest.fixture
def logging_restored() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:], logger.propagate = handlers, propagate
        logger.setLevel(level)


async def app(scope: object, receive: object, send: object) -> None:  # never called
    raise AssertionError


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_uvicorn_builds_no_access_line_per_answer(logging_restored: None, log_format: str) -> None:
    # As `serve` runs: uvicorn sets its loggers up first, then the app factory calls ours.
    config = uvicorn.Config(app, access_log=False, log_config=None)
    config.load()
    configure_logging(log_format, "debug")
    # A loop of its own: an earlier test may have closed the main thread's.
    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    finally:
        loop.close()
    assert protocol.access_log is False


def test_uvicorn_errors_still_reach_the_receivers_log(
    logging_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    logging.getLogger("uvicorn.error").error("could not bind")
    logging.getLogger("uvicorn.access").info("127.0.0.1 - POST /webhooks/osma 202")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and '"msg":"could not bind"' in lines[0]
