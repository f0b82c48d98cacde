"""`osma-router sign` and `send`: the `osma-signature` header for a file, and a signed POST.

Both, and `replay --to`, take the signing secret from one source, the first of these given:
`--secret S`, `--secret-file FILE` (its first line, stripped), or the first secret of
`OSMA_ROUTER_WEBHOOK_SECRETS` (environment, then `.env`). The file and the variable keep the
secret out of shell history and `ps`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx

from ..exceptions import ConfigError
from ..model.signature import sign
from ..settings import PREFIX, read_setting
from .common import add_command, fail, read_input

SECRETS_VARIABLE = f"{PREFIX}WEBHOOK_SECRETS"


def add_secret_options(parser: Any, *, what: str = "the signing secret") -> None:
    """`--secret S` and `--secret-file FILE` on `parser` (or an argument group)."""
    parser.add_argument(
        "--secret",
        metavar="S",
        help=f"{what} on the command line (visible in shell history and ps: prefer "
        f"--secret-file or {SECRETS_VARIABLE})",
    )
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help=f"read {what} from FILE's first line; without --secret and --secret-file, "
        f"the first of {SECRETS_VARIABLE} is used",
    )


def secret_given(args: argparse.Namespace) -> bool:
    """Whether `--secret` or `--secret-file` is on the command line."""
    return args.secret is not None or args.secret_file is not None


def signing_secret(args: argparse.Namespace) -> str:
    """The one secret to sign with: `--secret`, else `--secret-file`, else the first of
    OSMA_ROUTER_WEBHOOK_SECRETS; none of them is a `ConfigError` naming all three."""
    if args.secret is not None:
        if not args.secret.strip():
            raise ConfigError("--secret is empty")
        return str(args.secret)
    if args.secret_file is not None:
        return _first_line(args.secret_file)
    secrets = read_setting(SECRETS_VARIABLE)
    if secrets:
        return str(secrets[0].reveal())
    raise ConfigError(f"no signing secret: set {SECRETS_VARIABLE}, or give --secret-file FILE or --secret S")


def _first_line(name: str) -> str:
    try:
        with Path(name).open(encoding="utf-8") as file:
            line = file.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"--secret-file {name}: cannot read: {reason}") from None
    if not line:
        raise ConfigError(f"--secret-file {name}: the first line is empty; it should hold the secret")
    return line


def cmd_sign(args: argparse.Namespace) -> int:
    secret = signing_secret(args)
    body = read_input(args.file)
    timestamp = args.timestamp if args.timestamp is not None else int(time.time())
    print(sign(body, secret, timestamp))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    secret = signing_secret(args)
    return send_signed(args.url, read_input(args.file), secret, timeout=args.timeout)


def send_signed(
    url: str, body: bytes, secret: str, *, timeout: float, agent: str = "osma-router-send"
) -> int:
    """Sign `body`, POST it to `url`, print the status line and the answer's body; the exit
    code: 0 on 2xx, 1 otherwise (`send`, `trigger`)."""
    headers = {
        "content-type": "application/json",
        "osma-signature": sign(body, secret, int(time.time())),
        "user-agent": agent,
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return fail(f"could not POST to {url}: {type(exc).__name__}: {exc}")
    print(f"HTTP {response.status_code} {response.reason_phrase}")
    print(response.text)
    return 0 if 200 <= response.status_code < 300 else 1


def add_commands(sub: Any) -> None:
    """`osma-router sign` and `osma-router send`."""
    p = add_command(sub, "sign", cmd_sign, "print the osma-signature header value for FILE's bytes")
    add_secret_options(p)
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
    add_secret_options(p)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
