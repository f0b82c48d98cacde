"""`osma-router sign` and `send`: the `osma-signature` header for a file, and a signed POST."""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from ..model.signature import sign
from .common import add_command, fail, read_input


def cmd_sign(args: argparse.Namespace) -> int:
    body = read_input(args.file)
    timestamp = args.timestamp if args.timestamp is not None else int(time.time())
    print(sign(body, args.secret, timestamp))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    body = read_input(args.file)
    headers = {
        "content-type": "application/json",
        "osma-signature": sign(body, args.secret, int(time.time())),
        "user-agent": "osma-router-send",
    }
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        return fail(f"could not POST to {args.url}: {type(exc).__name__}: {exc}")
    print(f"HTTP {response.status_code} {response.reason_phrase}")
    print(response.text)
    return 0 if 200 <= response.status_code < 300 else 1


def add_commands(sub: Any) -> None:
    """`osma-router sign` and `osma-router send`."""
    p = add_command(sub, "sign", cmd_sign, "print the osma-signature header value for FILE's bytes")
    p.add_argument("--secret", required=True, help="the signing secret (e.g. whsec_...)")
    p.add_argument("--timestamp", type=int, help="unix seconds to sign with (default: now)")
    p.add_argument("file", metavar="FILE", help="the body to sign ('-' for standard input)")

    p = add_command(
        sub,
        "send",
        cmd_send,
        "sign FILE and POST it to URL; print the status and body (exit 0 on 2xx, 1 otherwise)",
    )
    p.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:8000/webhooks/osma")
    p.add_argument("file", metavar="FILE", help="the event JSON to send ('-' for standard input)")
    p.add_argument("--secret", required=True, help="the signing secret")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
