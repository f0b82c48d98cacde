"""The baseline of bench/ingest.py: a bare Starlette app that reads the body of
`POST /webhooks/osma` and answers 202 with a small JSON body, nothing else.

Run as `python bench/bare_app.py --host H --port P --workers 1`: it is served with the
same uvicorn settings as `osma-router serve`, so the two servers differ only in the app.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# The keyword arguments `osma-router serve` passes to uvicorn.run (receiver/cli/serve.py,
# cmd_serve) besides host, port, workers and TLS, as they are when
# OSMA_ROUTER_TRUSTED_PROXIES is unset (the bench leaves it unset); keep the two in step.
SERVE_OPTIONS: dict[str, Any] = {
    "factory": True,
    "access_log": False,
    "log_config": None,
    "proxy_headers": False,
    "timeout_graceful_shutdown": 20,
}


async def accept(request: Request) -> Response:
    await request.body()
    return JSONResponse({"status": "accepted"}, status_code=202)


def create_app() -> Starlette:
    return Starlette(routes=[Route("/webhooks/osma", accept, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # Imported by name, like receiver.web.app:app_from_env: this file's folder is sys.path[0].
    uvicorn.run("bare_app:create_app", host=args.host, port=args.port, workers=args.workers, **SERVE_OPTIONS)


if __name__ == "__main__":
    main()
